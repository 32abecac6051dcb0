"""Likelihood surrogates for masked diffusion language models, as pure functions of tensors.

A masked diffusion LM scores a completion x (length L) given a prompt c by predicting masked tokens
from the unmasked ones. Its log-likelihood is the log of an average over unmasking orders sigma of
the any-order autoregressive likelihood prod_i p(x_sigma(i) | x_sigma(<i), c), which is intractable.
Policy-gradient methods use bounds instead:

- ELBO = E_{n, S} [ w(n) * sum_{i in S} log p(x_i | x with S masked, c) ], |S| = n, one forward
  pass per draw; equal in expectation to the mean over orders of the any-order AR log-likelihood.
- SPG's EUBO proxy (Renyi-type, power beta_E) and the ELBO/EUBO mixture.
- The importance-weighted bound log mean_k exp(AO-AR loglik(sigma_k)), which tightens with K and is
  exact when every order is used.

Shape legend: B batch, K Monte-Carlo draws or orders, P prompt length, L completion length,
T = P + L, V vocabulary.

Randomness is always an explicit ``torch.Generator``; draws are values that a rollout stores and
reuses for the old, new and reference policies (common random numbers).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

LogitsFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(input_ids (N, T) long, attention_mask (N, T) bool or None) -> logits (N, T, V).

With ``logits_at`` other than "all" the scorers also pass ``positions=``: a slice -> (N, Tp, V), or an (N, T)
bool tensor -> (M, V) at its True positions in row-major order (``MaskedDiffusionLM.forward``)."""

LogitsAt = Literal["all", "completion", "masked"]
"""Where scoring asks the model for logits: every position (any ``LogitsFn``), the completion span, or the
masked completion positions only (models that take ``positions``)."""

MaskScheme = Literal["count", "round", "bernoulli", "d1"]
BlockChoice = Literal["permutation", "uniform"]
ElboScale = Literal["sum", "mean"]

BERNOULLI_MIN_T = 1e-3
"""Floor of the ``bernoulli`` scheme's noise level, t = eps + (1 - eps) * u (LLaDA's eps): bounds its weight 1/t."""


@dataclass(frozen=True)
class MaskDraws:
    """K masking draws per sequence: which completion (and prompt) tokens are replaced by the mask token."""

    mask: torch.Tensor
    """(B, K, L) bool: True where a completion token is masked."""
    weight: torch.Tensor
    """(B, K) float: per-draw weight w making sum(w * masked log p) estimate the ELBO (e.g. L / n)."""
    t: torch.Tensor
    """(B, K) float in (0, 1]: the draw's noise level."""
    prompt_mask: torch.Tensor | None = None
    """(B, K, P) bool: True where a prompt token is masked (diffu-GRPO); None keeps the prompt clean."""

    @property
    def num_draws(self) -> int:
        return self.mask.shape[1]

    def __getitem__(self, rows: torch.Tensor | slice) -> MaskDraws:
        """The draws of a subset of sequences (for minibatches)."""
        pm = None if self.prompt_mask is None else self.prompt_mask[rows]
        return MaskDraws(self.mask[rows], self.weight[rows], self.t[rows], pm)

    def select(self, draws: slice) -> MaskDraws:
        """A subset of the K draws of every sequence (chunks of draws), (B, K) -> (B, k)."""
        pm = None if self.prompt_mask is None else self.prompt_mask[:, draws]
        return MaskDraws(self.mask[:, draws], self.weight[:, draws], self.t[:, draws], pm)

    def to(self, device: torch.device | str) -> MaskDraws:
        pm = None if self.prompt_mask is None else self.prompt_mask.to(device)
        return MaskDraws(self.mask.to(device), self.weight.to(device), self.t.to(device), pm)


def completion_valid_mask(
    completion_ids: torch.Tensor, eos_id: int | None, pad_id: int | None = None, *, include_eos: bool = True
) -> torch.Tensor:
    """(B, L) bool: completion positions that count, up to the first EOS (and not padding).

    Tokens after the first EOS are filler (LLaDA keeps emitting EOS); the first EOS itself counts
    when ``include_eos``, so the policy is credited for stopping.
    """
    valid = torch.ones_like(completion_ids, dtype=torch.bool)
    if pad_id is not None:
        valid &= completion_ids != pad_id
    if eos_id is not None:
        is_eos = (completion_ids == eos_id).int()
        eos_before = is_eos.cumsum(-1) - is_eos  # (B, L) number of EOS strictly before each position
        valid &= eos_before == 0
        if not include_eos:
            valid &= is_eos == 0
    return valid


def _noise_levels(batch: int, num_draws: int, generator: torch.Generator, device, stratified: bool) -> torch.Tensor:
    """(B, K) noise levels t in (0, 1]; stratified draws cover [0, 1) evenly from one random offset."""
    if stratified:
        offset = torch.rand(batch, 1, generator=generator, device=device)
        u = (offset + torch.arange(num_draws, device=device) / num_draws) % 1.0
    else:
        u = torch.rand(batch, num_draws, generator=generator, device=device)
    return 1.0 - u  # (B, K), in (0, 1] so that 1/t is finite


def _random_ranks(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random rank of each allowed position among the allowed ones; others rank last."""
    scores = torch.rand(allowed.shape, generator=generator, device=allowed.device)
    scores = scores.masked_fill(~allowed, 2.0)
    return scores.argsort(-1).argsort(-1)


def _draw_prompt_mask(
    prompt_valid: torch.Tensor | None, num_draws: int, prob: float, generator: torch.Generator
) -> torch.Tensor | None:
    """(B, K, P) bool: each valid prompt token masked with probability ``prob``; None when prob is 0."""
    if prob <= 0:
        return None
    if prompt_valid is None:
        raise ValueError("prompt_mask_prob > 0 needs prompt_valid (B, P)")
    batch, length = prompt_valid.shape
    u = torch.rand(batch, num_draws, length, generator=generator, device=prompt_valid.device)
    return (u < prob) & prompt_valid[:, None, :]


def draw_masks(
    valid: torch.Tensor,
    num_draws: int,
    *,
    generator: torch.Generator,
    scheme: MaskScheme = "count",
    stratified: bool = True,
    prompt_valid: torch.Tensor | None = None,
    prompt_mask_prob: float = 0.0,
) -> MaskDraws:
    """Draw K masks of each completion's valid tokens.

    Schemes (Lv = number of valid tokens, t the draw's noise level):
      - ``count``: n uniform on {1..Lv}, weight Lv / n (unbiased; the order-average identity).
      - ``round``: n = round(t * Lv), weight Lv / n, or 2 when n = Lv (its half-width bin); n = 0 adds 0.
      - ``bernoulli``: each valid token masked with probability t, weight 1 / t (continuous-time ELBO), with
        t floored as LLaDA does, t = eps + (1 - eps) * u, eps = ``BERNOULLI_MIN_T``, so the weight is at
        most 1 / eps. Its expectation is the ELBO's time integral over [eps, 1] divided by 1 - eps instead
        of the integral over [0, 1]: a bias of order eps relative to the ELBO, traded for bounded weights.
      - ``d1``: n = floor(t * Lv), weight Lv / max(n, 1), as the d1/FPO release; biased (never n = Lv).
    The prompt is never masked unless ``prompt_mask_prob`` > 0 (diffu-GRPO's random prompt masking).

    Args:
        valid: (B, L) bool, the completion positions that count.
        num_draws: K.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    batch, _ = valid.shape
    device = valid.device
    lengths = valid.sum(-1, keepdim=True).float()  # (B, 1)
    t = _noise_levels(batch, num_draws, generator, device, stratified)  # (B, K)
    allowed = valid[:, None, :].expand(-1, num_draws, -1)  # (B, K, L)
    has_tokens = lengths > 0

    if scheme == "bernoulli":
        t = BERNOULLI_MIN_T + (1.0 - BERNOULLI_MIN_T) * t  # (B, K) in (eps, 1]: weight 1/t < 1/eps
        u = torch.rand(allowed.shape, generator=generator, device=device)
        mask = (u < t[..., None]) & allowed
        weight = torch.where(has_tokens, 1.0 / t, torch.zeros_like(t))
    elif scheme in ("count", "round", "d1"):
        if scheme == "count":
            n = torch.ceil(t * lengths).clamp(min=1)
            weight = lengths / n.clamp(min=1)
        elif scheme == "round":
            n = torch.round(t * lengths)
            weight = torch.where(n >= lengths, torch.full_like(n, 2.0), lengths / n.clamp(min=1))
            weight = torch.where(n == 0, torch.zeros_like(n), weight)
        else:
            n = torch.floor(t * lengths)
            weight = lengths / n.clamp(min=1)
        n = torch.minimum(n, lengths)  # (B, K)
        mask = (_random_ranks(allowed, generator) < n[..., None]) & allowed
        weight = torch.where(has_tokens, weight, torch.zeros_like(weight))
    else:
        raise ValueError(f"unknown mask scheme {scheme!r}; expected one of count, round, bernoulli, d1")

    prompt_mask = _draw_prompt_mask(prompt_valid, num_draws, prompt_mask_prob, generator)
    return MaskDraws(mask=mask, weight=weight.float(), t=t, prompt_mask=prompt_mask)


def draw_block_random_masks(
    valid: torch.Tensor,
    num_draws: int,
    *,
    generator: torch.Generator,
    block_length: int,
    prompt_valid: torch.Tensor | None = None,
    prompt_mask_prob: float = 0.0,
    block_choice: BlockChoice = "permutation",
) -> MaskDraws:
    """SPG's ``block_random`` masking: pick a block b, mask every later block fully, and inside b a
    uniform count in [1, len(b)] of random positions, mimicking a semi-autoregressive decode state.

    How each draw picks its block b (``block_choice``), with n = ceil(L / block_length) blocks in the
    completion's L positions and n_v = the blocks that hold valid tokens:
    - ``permutation`` (SPG's release): a random permutation of the n blocks, modulo n_v, gives the K
      draws' blocks. When every block holds valid tokens (n_v = n) a sequence's K <= n draws never repeat
      a block; with fewer valid blocks they can (two of 3 valid of 8 blocks coincide with probability
      1/4, against 1/3 for independent draws), and the choice is not uniform when n_v does not divide n
      (3/8, 3/8, 2/8). For K > n (where the release stops) further draws continue with fresh permutations.
    - ``uniform``: each draw picks one of the n_v blocks uniformly and independently.

    Positions outside ``valid`` (the filler after the first EOS) are always masked, as SPG does, so the
    model never sees the filler. They are masked but not scored (the bounds count ``mask & valid``
    only) and enter neither the weight nor t.

    The weight is Lv / n_masked, so the per-token ("mean") ELBO is SPG's mean over masked tokens.
    """
    batch, length = valid.shape
    device = valid.device
    lengths = valid.sum(-1, keepdim=True)  # (B, 1)
    num_blocks = torch.div(lengths + block_length - 1, block_length, rounding_mode="floor").clamp(min=1)
    if block_choice == "permutation":
        total_blocks = -(-length // block_length)  # n: blocks in the whole completion, valid or not
        rounds = -(-num_draws // total_blocks)  # permutations needed to cover K draws
        keys = torch.rand(batch, rounds, total_blocks, generator=generator, device=device)
        permutations = keys.argsort(-1).reshape(batch, rounds * total_blocks)[:, :num_draws]  # (B, K)
        block = permutations % num_blocks  # (B, K) chosen block
    elif block_choice == "uniform":
        u = torch.rand(batch, num_draws, generator=generator, device=device)
        block = torch.floor(u * num_blocks).long()  # (B, K) chosen block
    else:
        raise ValueError(f"unknown block_choice {block_choice!r}; expected 'permutation' or 'uniform'")
    pos_block = (torch.arange(length, device=device) // block_length)[None, None, :]  # (1, 1, L)
    allowed = valid[:, None, :].expand(-1, num_draws, -1)
    in_block = (pos_block == block[..., None]) & allowed  # (B, K, L)
    block_len = in_block.sum(-1).clamp(min=1)  # (B, K)
    u = torch.rand(batch, num_draws, generator=generator, device=device)
    count = torch.floor(u * block_len).long() + 1  # (B, K) uniform in [1, len(b)]
    in_block_masked = in_block & (_random_ranks(in_block, generator) < count[..., None])
    scored = ((pos_block > block[..., None]) & allowed) | in_block_masked  # (B, K, L)
    n_masked = scored.sum(-1).float()
    weight = torch.where(n_masked > 0, lengths.float() / n_masked.clamp(min=1), torch.zeros_like(n_masked))
    prompt_mask = _draw_prompt_mask(prompt_valid, num_draws, prompt_mask_prob, generator)
    t = n_masked / lengths.float().clamp(min=1)
    mask = scored | ~allowed  # (B, K, L): filler after EOS is masked too, but outside valid it is never scored
    return MaskDraws(mask=mask, weight=weight, t=t, prompt_mask=prompt_mask)


def draw_one_step_masks(
    valid: torch.Tensor,
    num_draws: int,
    *,
    generator: torch.Generator,
    prompt_valid: torch.Tensor | None = None,
    prompt_mask_prob: float = 0.0,
) -> MaskDraws:
    """diffu-GRPO's one-step draws: the whole completion masked (weight 1), the prompt masked at random.

    Every completion token is then predicted in one pass from the prompt alone: d1's per-token
    one-step log-probabilities, with fresh prompt masks as the only randomness.
    """
    batch, length = valid.shape
    # every position, filler after EOS included: the model sees the prompt and L mask tokens, as in d1
    mask = torch.ones(batch, num_draws, length, dtype=torch.bool, device=valid.device)  # (B, K, L)
    ones = torch.ones(batch, num_draws, device=valid.device)
    prompt_mask = _draw_prompt_mask(prompt_valid, num_draws, prompt_mask_prob, generator)
    return MaskDraws(mask=mask, weight=ones, t=ones, prompt_mask=prompt_mask)


def masked_inputs(
    prompt_ids: torch.Tensor, completion_ids: torch.Tensor, draws: MaskDraws, mask_id: int
) -> torch.Tensor:
    """(B, K, T) noisy sequences: prompt + completion with the drawn positions set to ``mask_id``."""
    batch, num_draws = draws.mask.shape[:2]
    prompt = prompt_ids[:, None, :].expand(batch, num_draws, -1)
    completion = completion_ids[:, None, :].expand(batch, num_draws, -1)
    completion = completion.masked_fill(draws.mask, mask_id)
    if draws.prompt_mask is not None:
        prompt = prompt.masked_fill(draws.prompt_mask, mask_id)
    return torch.cat([prompt, completion], dim=-1)


def token_logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets] without materialising the full (..., V) log-softmax.

    Half-precision logits are upcast to float32 first: log-sum-exp over a large vocabulary in bf16
    loses the small differences the ratio depends on.

    Args:
        logits: (..., V). targets: (...) long. Returns (...) in float32 or wider.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    picked = logits.gather(-1, targets[..., None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def masked_token_logprobs(
    logits_fn: LogitsFn,
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    draws: MaskDraws,
    *,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    logits_at: LogitsAt = "all",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(x_i | noisy sequence, c) at the completion positions, for all K draws in one forward pass.

    The full-vocabulary logits are the largest tensor of scoring ((B*K, T, V) floats, kept for the backward
    pass), yet the bounds read only the masked completion tokens. ``logits_at`` says where they are computed:
      - ``"all"``: every position, prompt included, then sliced (any ``LogitsFn``);
      - ``"completion"``: ``positions=slice(P, T)``, (B*K, L, V);
      - ``"masked"``: only the masked completion positions (and only the ``valid`` ones when given), as an
        (B*K, T) bool ``positions``: (M, V) with M = number of masked tokens, about half the completion.
    The token log-probs are the same in all three (``logsumexp - gathered logit`` per position).

    Args:
        prompt_ids: (B, P) long. completion_ids: (B, L) long.
        attention_mask: (B, T) bool, False on padding, or None.
        valid: (B, L) bool or None; with ``"masked"``, masked positions outside it are not computed.
    Returns:
        (B, K, L) float32 (or wider). Only masked positions enter the bounds: with ``"all"`` and
        ``"completion"`` the others are computed but unused; with ``"masked"`` they hold 0 (no gradient).
    """
    if logits_at not in ("all", "completion", "masked"):
        raise ValueError(f"logits_at must be 'all', 'completion' or 'masked', got {logits_at!r}")
    batch, num_draws, length = draws.mask.shape
    noisy = masked_inputs(prompt_ids, completion_ids, draws, mask_id)  # (B, K, T)
    total = noisy.shape[-1]
    rows = noisy.reshape(batch * num_draws, total)  # (B*K, T)
    attn = None
    if attention_mask is not None:
        attn = attention_mask[:, None, :].expand(batch, num_draws, total).reshape(batch * num_draws, total)
    targets = completion_ids[:, None, :].expand(batch, num_draws, length)  # (B, K, L)
    if logits_at == "masked":
        scored = draws.mask if valid is None else draws.mask & valid[:, None, :]  # (B, K, L)
        positions = torch.cat([scored.new_zeros(batch, num_draws, total - length), scored], -1)  # (B, K, T)
        logits = logits_fn(rows, attn, positions=positions.reshape(batch * num_draws, total))  # (M, V)
        picked = token_logprobs_from_logits(logits, targets[scored])  # (M,)
        return picked.new_zeros(batch, num_draws, length).masked_scatter(scored, picked)  # (B, K, L)
    if logits_at == "completion":
        logits = logits_fn(rows, attn, positions=slice(total - length, total))  # (B*K, L, V)
    else:
        logits = logits_fn(rows, attn)[:, total - length :]  # (B*K, L, V)
    return token_logprobs_from_logits(logits, targets.reshape(batch * num_draws, length)).view(batch, num_draws, length)


def elbo_from_logprobs(
    token_logp: torch.Tensor, draws: MaskDraws, valid: torch.Tensor, *, scale: ElboScale = "sum"
) -> torch.Tensor:
    """Monte-Carlo ELBO from masked-token log-probabilities.

    ELBO = mean_k w_k * sum_{i masked in draw k, valid} log p_k(x_i). ``scale="sum"`` is the
    sequence-level bound on log pi(x | c) (d1/FPO); ``"mean"`` divides by the valid length (SPG).

    Args:
        token_logp: (B, K, L). valid: (B, L) bool. Returns (B,).
    """
    counted = draws.mask & valid[:, None, :]  # (B, K, L)
    per_draw = torch.where(counted, token_logp, torch.zeros_like(token_logp)).sum(-1) * draws.weight  # (B, K)
    elbo = per_draw.mean(-1)  # (B,)
    if scale == "mean":
        elbo = elbo / valid.sum(-1).clamp(min=1)
    elif scale != "sum":
        raise ValueError(f"unknown ELBO scale {scale!r}; expected 'sum' or 'mean'")
    return elbo


def eubo_from_logprobs(
    token_logp: torch.Tensor, draws: MaskDraws, valid: torch.Tensor, *, beta: float = 1.0, scale: ElboScale = "mean"
) -> torch.Tensor:
    """SPG's Renyi-type upper-bound proxy (EUBO).

    Per token i: q_i = mean_k [ p_k(x_i)^beta * 1[i masked in k] * w_k ], then
    EUBO = (1 / beta) * mean over tokens with q_i > 0 of log q_i (``"mean"``, as SPG), or that mean
    times the valid length (``"sum"``, the sequence scale of the ELBO). With exact expectations and
    consistent conditionals it upper-bounds log pi(x | c); beta >= 1 loosens it (power means).

    Args:
        token_logp: (B, K, L). valid: (B, L) bool. Returns (B,).
    """
    counted = draws.mask & valid[:, None, :]  # (B, K, L)
    log_terms = beta * token_logp + torch.log(draws.weight.clamp(min=1e-30))[..., None]  # (B, K, L)
    log_terms = log_terms.masked_fill(~counted, -math.inf)
    log_q = torch.logsumexp(log_terms, dim=1) - math.log(draws.num_draws)  # (B, L) log of the draw average
    seen = torch.isfinite(log_q)  # tokens masked in at least one draw
    n_seen = seen.sum(-1).clamp(min=1)
    eubo = torch.where(seen, log_q, torch.zeros_like(log_q)).sum(-1) / (beta * n_seen)  # (B,)
    if scale == "sum":
        eubo = eubo * valid.sum(-1)
    elif scale != "mean":
        raise ValueError(f"unknown EUBO scale {scale!r}; expected 'sum' or 'mean'")
    return eubo


def mixture_bound(elbo: torch.Tensor, eubo: torch.Tensor, weight: float) -> torch.Tensor:
    """SPG's mixture ``weight * EUBO + (1 - weight) * ELBO`` used for negative advantages."""
    return weight * eubo + (1.0 - weight) * elbo


def masked_elbo(
    logits_fn: LogitsFn,
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    draws: MaskDraws,
    *,
    mask_id: int,
    scale: ElboScale = "sum",
    attention_mask: torch.Tensor | None = None,
    logits_at: LogitsAt = "all",
) -> torch.Tensor:
    """(B,) Monte-Carlo ELBO of each completion: one batched forward pass over all K draws."""
    token_logp = masked_token_logprobs(
        logits_fn, prompt_ids, completion_ids, draws,
        mask_id=mask_id, attention_mask=attention_mask, logits_at=logits_at, valid=valid,
    )  # fmt: skip
    return elbo_from_logprobs(token_logp, draws, valid, scale=scale)


# --------------------------------------------------------------------------- any-order likelihoods


def random_orders(valid: torch.Tensor, num_orders: int, *, generator: torch.Generator) -> torch.Tensor:
    """(B, K, L) long: K uniformly random unmasking orders of each row's valid positions (invalid last)."""
    allowed = valid[:, None, :].expand(-1, num_orders, -1)
    scores = torch.rand(allowed.shape, generator=generator, device=valid.device).masked_fill(~allowed, 2.0)
    return scores.argsort(-1)


def all_orders(length: int, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, L!, L) long: every permutation of L positions, for exact likelihoods of tiny completions."""
    perms = torch.tensor(list(itertools.permutations(range(length))), dtype=torch.long, device=device)
    return perms[None].expand(batch, -1, -1)


@dataclass
class OrderStates:
    """The B * K * L decoding states of K unmasking orders of each completion, one row each.

    Row (b, k, j) is completion b with the positions revealed after step j of order k masked; it predicts
    position ``orders[b, k, j]``. Rows run over b, then k, then j.
    """

    inputs: torch.Tensor
    """(S, T) prompt + noisy completion, S = B * K * L."""
    attention: torch.Tensor | None
    """(S, T) bool attention mask, or None."""
    predicted: torch.Tensor
    """(S,) long: the completion position each row predicts."""
    targets: torch.Tensor
    """(S,) long: the token at that position."""
    counted: torch.Tensor
    """(S,) bool: the row's step reveals a valid token (steps past a completion's length predict nothing)."""
    shape: tuple[int, int, int]
    """(B, K, L)."""


def order_states(
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    orders: torch.Tensor,
    *,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
) -> OrderStates:
    """Every decoding state of ``orders`` (B, K, L), valid positions first (``random_orders``)."""
    batch, num_orders, length = orders.shape
    ranks = orders.argsort(-1)  # (B, K, L) step at which each position is revealed
    steps = torch.arange(length, device=orders.device)
    masked = (ranks[:, :, None, :] >= steps[None, None, :, None]) & valid[:, None, None, :]  # (B, K, L_step, L)
    draws = MaskDraws(
        mask=masked.reshape(batch, num_orders * length, length),
        weight=torch.ones(batch, num_orders * length, device=orders.device),
        t=torch.ones(batch, num_orders * length, device=orders.device),
    )
    noisy = masked_inputs(prompt_ids, completion_ids, draws, mask_id)  # (B, K*L, T)
    total = noisy.shape[-1]
    attention = None
    if attention_mask is not None:
        attention = attention_mask[:, None, :].expand(batch, num_orders * length, total).reshape(-1, total)
    predicted = orders.reshape(-1)  # (S,): step j of order k predicts orders[b, k, j]
    targets = completion_ids[:, None, :].expand(batch, num_orders, length).gather(-1, orders).reshape(-1)
    counted = (valid.sum(-1)[:, None, None] > steps[None, None, :]).expand(batch, num_orders, length).reshape(-1)
    return OrderStates(noisy.reshape(-1, total), attention, predicted, targets, counted, (batch, num_orders, length))


def order_state_logprobs(
    logits_fn: LogitsFn, states: OrderStates, rows: slice, *, logits_at: LogitsAt = "all"
) -> torch.Tensor:
    """(s,) log p(target | state) of the states in ``rows`` (0 where a state predicts nothing).

    ``logits_at="masked"`` asks the model for the logits of each state's predicted position alone, (s, V),
    through ``positions`` (as ``masked_token_logprobs``); ``"all"`` (any ``LogitsFn``) computes every
    position's and picks that one. ``"completion"`` is read as ``"all"``.
    """
    length = states.shape[2]
    inputs = states.inputs[rows]  # (s, T)
    attention = None if states.attention is None else states.attention[rows]
    at = states.predicted[rows] + inputs.shape[1] - length  # (s,) sequence position predicted
    if logits_at == "masked":
        positions = torch.zeros_like(inputs, dtype=torch.bool)
        positions[torch.arange(inputs.shape[0], device=inputs.device), at] = True
        logits = logits_fn(inputs, attention, positions=positions)  # (s, V): one position per row, in row order
    else:
        logits = logits_fn(inputs, attention)  # (s, T, V)
        logits = logits.gather(1, at[:, None, None].expand(-1, 1, logits.shape[-1])).squeeze(1)  # (s, V)
    logp = token_logprobs_from_logits(logits, states.targets[rows])  # (s,)
    return torch.where(states.counted[rows], logp, torch.zeros_like(logp))


def state_chunks(states: OrderStates, max_rows: int) -> list[slice]:
    """Consecutive slices of at most ``max_rows`` decoding states (memory chunks, not per-sample work)."""
    count = states.inputs.shape[0]
    return [slice(start, min(start + max_rows, count)) for start in range(0, count, max_rows)]


def any_order_loglik(
    logits_fn: LogitsFn,
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    orders: torch.Tensor,
    *,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    max_rows: int = 4096,
) -> torch.Tensor:
    """(B, K) any-order AR log-likelihood sum_j log p(x_sigma(j) | x_sigma(<j), c) for each order.

    All B * K * L decoding states go through the model in batches of at most ``max_rows`` rows (one
    pass when they fit). Invalid positions are never masked and never predicted.

    Args:
        orders: (B, K, L) long permutations with the valid positions first (``random_orders``).
    """
    states = order_states(prompt_ids, completion_ids, valid, orders, mask_id=mask_id, attention_mask=attention_mask)
    return order_logliks_of_states(logits_fn, states, max_rows)


def order_logliks_of_states(
    logits_fn: LogitsFn, states: OrderStates, max_rows: int, *, logits_at: LogitsAt = "all"
) -> torch.Tensor:
    """(B, K) any-order log-likelihoods from every decoding state, ``max_rows`` states per forward pass."""
    chunks = state_chunks(states, max_rows)
    step_logp = torch.cat([order_state_logprobs(logits_fn, states, rows, logits_at=logits_at) for rows in chunks])
    return step_logp.view(states.shape).sum(-1)


def order_elbo(order_loglik: torch.Tensor) -> torch.Tensor:
    """(B,) mean over orders of the any-order AR log-likelihood: an ELBO (Jensen over orders)."""
    return order_loglik.mean(-1)


def order_iw_loglik(order_loglik: torch.Tensor) -> torch.Tensor:
    """(B,) log mean_k exp(AO-AR loglik_k): importance-weighted bound, exact when all orders are used."""
    return torch.logsumexp(order_loglik, dim=-1) - math.log(order_loglik.shape[-1])


def exact_loglik(
    logits_fn: LogitsFn,
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) exact log pi(x | c) of a masked diffusion model by enumerating all L! orders (tiny L)."""
    batch, length = completion_ids.shape
    if length > 7:
        raise ValueError(f"exact enumeration needs L <= 7 (L! orders), got L = {length}")
    valid = torch.ones_like(completion_ids, dtype=torch.bool)
    orders = all_orders(length, batch, completion_ids.device)
    loglik = any_order_loglik(
        logits_fn, prompt_ids, completion_ids, valid, orders, mask_id=mask_id, attention_mask=attention_mask
    )
    return order_iw_loglik(loglik)
