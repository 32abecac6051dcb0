"""Samplers for masked diffusion LMs, vectorised over the batch.

A completion of ``gen_length`` tokens starts fully masked after the prompt and is decoded block by
block, left to right (semi-autoregressive blocks of ``block_length``). Inside the current block each
step runs the model once on the whole sequence (asking it for the block's logits only), proposes a
token for every masked position (argmax, or Gumbel-max at a temperature, never the mask token
itself) and unmasks some of them:

- ``low_confidence`` (LLaDA): the k most confident proposals, k from a linear schedule
  (``num_transfer_tokens``), where confidence is the model's probability of the proposed token;
- ``random``: k proposals at random positions, same schedule;
- ``threshold`` (Fast-dLLM parallel decoding): every proposal whose confidence >= threshold, and at
  least the most confident one, so each step makes progress and the block always finishes.
Tokens outside the current block never change and the prompt is never touched. With
``stop_at_eos`` the loop ends as soon as every row has decoded an EOS with everything before it
decoded; the still-masked positions are then filled with EOS.

Two decoders share these rules:
- ``generate`` decodes a batch together, block by block, until its slowest row is done (the default);
- ``generate_continuous`` (``dipod.language.continuous``) decodes a queue of prompts (e.g. every prompt
  of one RL step) in ``slots`` rows: a row that finishes frees its slot for the next waiting prompt, so
  rows move through their blocks independently and the batch's NFE falls like the per-row NFE (continuous
  batching). Each
  row's noise comes from its own counter-based stream (``counter_uniform``), so a row's tokens do not
  depend on its neighbours, the slot count or the order of the queue.
Both can reuse keys and values between steps (``kv_cache``): Fast-dLLM's prefix cache keeps those of
the prompt and of the finished blocks, computed by an exact forward pass at the first step of each
block, while the current block (and, for ``prefix``, everything after it) is recomputed; ``dual``
also keeps the masked blocks after the current one. It is an approximation (the cached keys do not see
the tokens decoded since), exact at the first step of every block; models implementing ``KVCacheLM``
support it, others fall back to exact decoding with a warning.

Shape legend: B batch, N queued prompts, n live rows, P prompt length, L gen_length, Lb block_length,
S steps per block, V vocab. Randomness comes only from the explicit ``generator`` (or per-row seeds);
greedy decoding (temperature 0 with low-confidence or threshold remasking) uses none.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from dipod.language.models import KVCacheLM, MaskedDiffusionLM

Remasking = Literal["low_confidence", "random", "threshold"]
REMASKING = ("low_confidence", "random", "threshold")
KVCache = Literal["none", "prefix", "dual"]
KV_CACHE = ("none", "prefix", "dual")


@dataclass
class SampleOut:
    """Decoded sequences and what they cost."""

    tokens: torch.Tensor
    """(B, P + L) long: the prompt followed by the completion."""
    prompt_length: int
    """P: the completion is ``tokens[:, P:]``."""
    nfe: int
    """Number of function evaluations: batched forward passes of the model."""
    row_nfe: torch.Tensor
    """(B,) long: the forward passes each row needed, i.e. those in which it still had masked tokens in the
    current block and had not finished at an EOS; what ``nfe`` would be if the row were decoded alone."""

    @property
    def completion(self) -> torch.Tensor:
        """(B, L) long completion tokens."""
        return self.tokens[:, self.prompt_length :]


def num_transfer_tokens(block_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """How many tokens each step of a block unmasks: LLaDA's linear schedule (Eq. 8 of its paper).

    A block with n masked tokens unmasks n // S per step, and one more in the first n % S steps, so
    the masked fraction falls linearly in the step index and the counts sum to n.

    Args:
        block_masked: (B, Lb) bool, the masked positions of the block at its first step.
    Returns:
        (B, S) long.
    """
    n = block_masked.sum(-1, keepdim=True)  # (B, 1)
    base = torch.div(n, steps, rounding_mode="floor")
    extra = torch.arange(steps, device=block_masked.device)[None, :] < (n % steps)  # (B, S)
    return base + extra.long()


def gumbel_argmax(logits: torch.Tensor, *, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Sample argmax(logits / temperature + Gumbel noise), i.e. from softmax(logits / temperature).

    Gumbel noise is -log E with E = -log u ~ Exp(1), u ~ U[0, 1), so this is argmax(logits / T - log E)
    (drawing u and taking two logs is about three times faster on a CPU than ``exponential_``).
    The noise is float64: with low-precision noise, Gumbel-max sampling is biased towards the
    top tokens (arXiv:2409.02908, as LLaDA notes). Temperature 0 is the plain argmax.

    Args:
        logits: (..., V). Returns (...) long.
    """
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
    return gumbel_argmax_from_uniform(logits, u, temperature=temperature)


def gumbel_argmax_from_uniform(logits: torch.Tensor, u: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """``gumbel_argmax`` with given uniform draws u (..., V) float64 in [0, 1); ``u`` is overwritten."""
    exp_noise = u.log_().neg_()  # Exp(1); u = 0 gives +inf, noise -inf: that token is simply not chosen
    return (logits.double() / temperature - exp_noise.log_()).argmax(-1)


def categorical_from_uniform(logits: torch.Tensor, u: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """A draw from softmax(logits / temperature) by inverting its CDF at one uniform u per position: the same
    distribution as ``gumbel_argmax``, from one random number instead of V (a counter-based stream hashes
    every number it draws, so V per position would dominate a decoding step at a realistic vocabulary).

    The CDF is accumulated in float64; a token of probability 0 (a -inf logit) is never drawn, since u is
    never 0.

    Args:
        logits: (..., V). u: (...) float64 in (0, 1). Returns (...) long.
    """
    probs = torch.softmax(logits.double() / temperature, dim=-1)  # (..., V)
    cdf = probs.cumsum_(-1)
    target = (u * cdf[..., -1]).unsqueeze(-1)  # (..., 1), scaled so rounding in the sum cannot leave the CDF
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def _as_int64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _as_int64(0x9E3779B97F4A7C15)
_MIX1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX2 = _as_int64(0x94D049BB133111EB)


def counter_uniform(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Uniform draws in (0, 1), float64, that depend only on (seed, counter): SplitMix64 of seed + counter * golden.

    A counter-based stream (as in Philox or JAX's keys) is what lets every row of a batch have its own
    random stream without a Python loop over per-row generators: row n's draw for a given counter is the
    same whatever else is in the batch. torch's int64 arithmetic wraps like uint64; the shifts are made
    logical with a mask. 53 random bits, centred, so neither 0 nor 1 occurs.

    Args:
        seeds: (n,) long. counters: (n, ...) long. Returns (n, ...) float64.
    """
    z = seeds.view(-1, *([1] * (counters.dim() - 1))) + counters * _GOLDEN
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _MIX1
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _MIX2
    z = z ^ ((z >> 31) & ((1 << 33) - 1))
    return (((z >> 11) & ((1 << 53) - 1)).double() + 0.5) * 2.0**-53


def top_k_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: True at each row's k[b] highest scores; one top-k call for the whole batch.

    Args:
        scores: (B, N) float. k: (B,) long, each <= N.
    """
    k_max = int(k.max())
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if k_max == 0:
        return chosen
    top = scores.topk(k_max, dim=-1).indices  # (B, k_max), highest first
    keep = torch.arange(k_max, device=scores.device)[None, :] < k[:, None]  # (B, k_max)
    return chosen.scatter(-1, top, keep)


def rows_finished(completion: torch.Tensor, *, mask_id: int, eos_id: int) -> torch.Tensor:
    """(B,) bool: the row has decoded an EOS and every position before it is decoded."""
    masked = (completion == mask_id).long()  # (B, L)
    masked_before = masked.cumsum(-1) - masked  # (B, L) masked positions strictly before each one
    eos_decoded = (completion == eos_id) & (masked == 0)
    return (eos_decoded & (masked_before == 0)).any(-1)


def check_decoding_args(
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    gen_length: int,
    block_length: int,
    steps: int | None,
    remasking: str,
    temperature: float,
    threshold: float | None,
    stop_at_eos: bool,
    eos_id: int | None,
    kv_cache: str,
    has_randomness: bool,
) -> None:
    """Reject bad arguments before any forward pass, naming the argument and its value."""
    if prompt_ids.dim() != 2 or prompt_ids.dtype != torch.long:
        raise ValueError(f"prompt_ids must be a (B, P) long tensor, got {tuple(prompt_ids.shape)} {prompt_ids.dtype}")
    if attention_mask is not None and attention_mask.shape != prompt_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != prompt_ids {tuple(prompt_ids.shape)}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if gen_length < 1 or block_length < 1 or gen_length % block_length:
        raise ValueError(f"gen_length = {gen_length} must be a positive multiple of block_length = {block_length}")
    num_blocks = gen_length // block_length
    if remasking == "threshold":
        if threshold is None or not 0 < threshold <= 1:
            raise ValueError(f"threshold remasking needs 0 < threshold <= 1, got {threshold}")
    elif steps is None or steps < num_blocks or steps % num_blocks:
        raise ValueError(f"steps = {steps} must be a positive multiple of the number of blocks ({num_blocks})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not has_randomness and (temperature > 0 or remasking == "random"):
        raise ValueError("sampling with temperature > 0 or random remasking needs an explicit torch.Generator")
    if stop_at_eos and eos_id is None:
        raise ValueError("stop_at_eos needs eos_id")
    if kv_cache not in KV_CACHE:
        raise ValueError(f"kv_cache must be one of {KV_CACHE}, got {kv_cache!r}")


def propose_tokens(
    logits: torch.Tensor,
    block_masked: torch.Tensor,
    *,
    mask_id: int,
    remasking: str,
    temperature: float,
    generator: torch.Generator | None = None,
    noise: tuple[torch.Tensor | None, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A token for every block position and the confidence that ranks it (-inf where already decoded).

    Confidence is the model's probability of the proposed token (low_confidence, threshold), or uniform
    noise (random remasking). The noise is drawn from ``generator`` (Gumbel-max), or given as ``noise`` =
    (token uniforms (B, Lb) float64, each inverted through its position's CDF, or None at temperature 0;
    random-remasking uniforms (B, Lb)).

    Args:
        logits: (B, Lb, V). block_masked: (B, Lb) bool. Returns proposal (B, Lb) long, confidence (B, Lb) float.
    """
    logits = logits.float().clone()
    logits[..., mask_id] = -torch.inf  # a decoded token is never the mask token (an untrained model may prefer it)
    if noise is None:
        proposal = gumbel_argmax(logits, temperature=temperature, generator=generator)
    elif temperature == 0:
        proposal = logits.argmax(-1)
    else:
        proposal = categorical_from_uniform(logits, noise[0], temperature=temperature)
    if remasking == "random":
        if noise is None:
            confidence = torch.rand(block_masked.shape, generator=generator, device=logits.device)
        else:
            confidence = noise[1].float()
    else:
        probs = torch.softmax(logits, dim=-1)
        confidence = probs.gather(-1, proposal[..., None]).squeeze(-1)  # p(proposed token)
    return proposal, confidence.masked_fill(~block_masked, -torch.inf)


def transfer_tokens(
    confidence: torch.Tensor, block_masked: torch.Tensor, *, k: torch.Tensor | None, threshold: float | None
) -> torch.Tensor:
    """(B, Lb) bool, the positions unmasked this step: each row's k[b] most confident (fixed schedules), or
    those whose confidence reaches ``threshold`` and at least the most confident one (``k`` None).

    Args:
        confidence: (B, Lb) float, -inf where already decoded. block_masked: (B, Lb) bool. k: (B,) long.
    """
    if k is None:
        most_confident = top_k_mask(confidence, torch.ones(len(confidence), dtype=torch.long, device=confidence.device))
        return ((confidence >= threshold) | most_confident) & block_masked
    return top_k_mask(confidence, k) & block_masked


def row_uniforms(
    seeds: torch.Tensor, row_step: torch.Tensor, position: torch.Tensor, *, gen_length: int, sample: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Each row's own uniforms for one step: the token draws (n, Lb) float64 (None unless ``sample``) and the
    random-remasking draws (n, Lb) float64.

    The counter of a draw is ((row step * L + completion position) * 2 + c), c = 0 for the token and 1 for
    remasking, so no two draws of a row share one.

    Args:
        seeds: (n,) long. row_step: (n,) long, the row's forward passes so far. position: (n, Lb) long,
            completion positions of the row's block.
    """
    base = (row_step[:, None] * gen_length + position) * 2  # (n, Lb)
    token_u = counter_uniform(seeds, base) if sample else None
    return token_u, counter_uniform(seeds, base + 1)


class BlockLogits:
    """One decoding step's model call: the logits of each row's current block, exact or with the KV cache.

    Rows may be in different blocks (continuous batching). Exact: the model is asked for the span that
    covers every row's block, and each row's block is gathered from it. Cached: each row's own block
    positions are asked for; when only some rows start a block, those get an exact forward pass of their
    own and the others a cached one (two calls on disjoint rows, one decoding step).
    """

    def __init__(self, model: MaskedDiffusionLM, *, kv_cache: str, block_length: int) -> None:
        self.model = model
        self.block_length = block_length
        self.mode = kv_cache if kv_cache == "none" or isinstance(model, KVCacheLM) else "none"
        if self.mode != kv_cache:
            warnings.warn(
                f"kv_cache = {kv_cache!r} but {type(model).__name__} does not implement KVCacheLM "
                "(cached_forward): decoding without the cache (exact)",
                stacklevel=3,
            )
        self.cache = None

    def __call__(
        self, x: torch.Tensor, attn: torch.Tensor | None, lo: torch.Tensor, refresh: torch.Tensor
    ) -> torch.Tensor:
        """Logits (n, Lb, V) of rows x (n, T) at their blocks lo[i] .. lo[i] + Lb; ``refresh`` (n,) bool marks
        the rows at the first step of a block, whose cached keys/values are recomputed (an exact forward)."""
        lo_min, lo_max = int(lo.min()), int(lo.max())
        if self.mode == "none":
            logits = self.model(x, attn, positions=slice(lo_min, lo_max + self.block_length))  # (n, span, V)
            if lo_min == lo_max:
                return logits
            return logits.gather(1, (self._where(lo) - lo_min)[..., None].expand(-1, -1, logits.shape[-1]))
        if self.cache is None or bool(refresh.all()):
            logits, self.cache = self.model.cached_forward(x, attn, cache=None, positions=self._positions(lo))
            return logits
        if not bool(refresh.any()):
            logits, self.cache = self._cached(x, attn, lo, self.cache)
            return logits
        starting, going = refresh.nonzero().squeeze(-1), (~refresh).nonzero().squeeze(-1)  # (n1,), (n2,)
        attn_s, attn_g = (None, None) if attn is None else (attn[starting], attn[going])
        logits_s, cache_s = self.model.cached_forward(
            x[starting], attn_s, cache=None, positions=self._positions(lo[starting])
        )  # (n1, Lb, V)
        logits_g, cache_g = self._cached(x[going], attn_g, lo[going], self.cache.select(going))  # (n2, Lb, V)
        self.cache.replace(starting, cache_s)
        self.cache.replace(going, cache_g)
        logits = logits_s.new_empty((len(lo), *logits_s.shape[1:]))  # (n, Lb, V)
        logits[starting] = logits_s
        logits[going] = logits_g
        return logits

    def _where(self, lo: torch.Tensor) -> torch.Tensor:
        """(n, Lb) long: each row's block positions."""
        return lo[:, None] + torch.arange(self.block_length, device=lo.device)

    def _positions(self, lo: torch.Tensor) -> slice | torch.Tensor:
        """The blocks' positions for the model: one slice when the rows share a block, else per row."""
        lo_min = int(lo.min())
        return slice(lo_min, lo_min + self.block_length) if lo_min == int(lo.max()) else self._where(lo)

    def _cached(self, x: torch.Tensor, attn: torch.Tensor | None, lo: torch.Tensor, cache: object) -> tuple:
        """The cached forward of rows x (n, T) past the first step of their blocks: recompute the block (dual),
        or the block and everything after it (prefix)."""
        hi = torch.full_like(lo, x.shape[1]) if self.mode == "prefix" else lo + self.block_length
        return self.model.cached_forward(x, attn, cache=cache, fresh_lo=lo, fresh_hi=hi, positions=self._positions(lo))

    def select(self, rows: torch.Tensor) -> None:
        """Keep the cache of ``rows`` ((n,) long) only."""
        if self.cache is not None:
            self.cache = self.cache.select(rows)


@torch.no_grad()
def generate(
    model: MaskedDiffusionLM,
    prompt_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    mask_id: int,
    eos_id: int | None,
    gen_length: int,
    block_length: int,
    steps: int | None = None,
    remasking: Remasking = "low_confidence",
    temperature: float = 0.0,
    threshold: float | None = None,
    stop_at_eos: bool = False,
    kv_cache: KVCache = "none",
    generator: torch.Generator | None,
) -> SampleOut:
    """Decode ``gen_length`` tokens after each prompt (see the module docstring for the strategies).

    Args:
        model: a MaskedDiffusionLM, called as ``model(input_ids (B, T), attention_mask (B, T) | None,
            positions=slice(lo, hi))`` -> the current block's logits (B, Lb, V).
        prompt_ids: (B, P) long, left-padded when lengths differ.
        attention_mask: (B, P) bool, False on prompt padding; completion positions are always attended.
        mask_id, eos_id: from the tokenizer (``model.mask_token_id``, ``model.eos_token_id``).
        steps: total denoising steps of the fixed schedules (split evenly over the blocks); unused by threshold.
        threshold: confidence needed to unmask in ``threshold`` remasking.
        kv_cache: none (exact), prefix or dual (Fast-dLLM's approximate caches; see the module docstring).
        generator: source of the Gumbel noise and of random remasking; None only for greedy decoding.
    """
    check_decoding_args(
        prompt_ids,
        attention_mask,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        remasking=remasking,
        temperature=temperature,
        threshold=threshold,
        stop_at_eos=stop_at_eos,
        eos_id=eos_id,
        kv_cache=kv_cache,
        has_randomness=generator is not None,
    )
    batch, prompt_length = prompt_ids.shape
    device = prompt_ids.device
    completion = torch.full((batch, gen_length), mask_id, dtype=torch.long, device=device)
    x = torch.cat([prompt_ids, completion], dim=1)  # (B, P + L)
    attn = None
    if attention_mask is not None:
        attn = torch.cat([attention_mask.bool(), torch.ones_like(completion, dtype=torch.bool)], dim=1)
    num_blocks = gen_length // block_length
    steps_per_block = None if remasking == "threshold" else steps // num_blocks
    forward = BlockLogits(model, kv_cache=kv_cache, block_length=block_length)
    nfe = 0
    row_nfe = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for block in range(num_blocks):
        lo = prompt_length + block * block_length
        hi = lo + block_length
        schedule = None
        if steps_per_block is not None:
            schedule = num_transfer_tokens(x[:, lo:hi] == mask_id, steps_per_block)  # (B, S)
        step = 0
        first_forward = True
        while True:
            block_masked = x[:, lo:hi] == mask_id  # (B, Lb)
            if schedule is not None:
                if step == steps_per_block:
                    break
                k = schedule[:, step]  # (B,)
                step += 1
                if not bool(k.any()):
                    continue  # nothing to unmask at this step: skip the forward pass
            elif not bool(block_masked.any()):
                break
            block_lo = torch.full((batch,), lo, dtype=torch.long, device=device)
            refresh = torch.full((batch,), first_forward, dtype=torch.bool, device=device)
            logits = forward(x, attn, block_lo, refresh)  # (B, Lb, V): the block's logits only
            first_forward = False
            nfe += 1
            row_nfe += (block_masked.any(-1) & ~finished).long()
            proposal, confidence = propose_tokens(
                logits, block_masked, mask_id=mask_id, remasking=remasking, temperature=temperature, generator=generator
            )  # (B, Lb) each
            transfer = transfer_tokens(confidence, block_masked, k=None if schedule is None else k, threshold=threshold)
            x[:, lo:hi] = torch.where(transfer, proposal, x[:, lo:hi])
            if stop_at_eos:
                finished = rows_finished(x[:, prompt_length:], mask_id=mask_id, eos_id=eos_id)
                if bool(finished.all()):
                    x[:, prompt_length:] = x[:, prompt_length:].masked_fill(x[:, prompt_length:] == mask_id, eos_id)
                    return SampleOut(tokens=x, prompt_length=prompt_length, nfe=nfe, row_nfe=row_nfe)
    return SampleOut(tokens=x, prompt_length=prompt_length, nfe=nfe, row_nfe=row_nfe)
