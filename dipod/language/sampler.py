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

Shape legend: B batch, P prompt length, L gen_length, Lb block_length, S steps per block, V vocab.
Randomness comes only from the explicit ``generator``; greedy decoding (temperature 0 with
low-confidence or threshold remasking) uses none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from dipod.language.config import SamplerConfig

if TYPE_CHECKING:
    from dipod.language.models import MaskedDiffusionLM

Remasking = Literal["low_confidence", "random", "threshold"]
REMASKING = ("low_confidence", "random", "threshold")


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
    exp_noise = u.log_().neg_()  # Exp(1); u = 0 gives +inf, noise -inf: that token is simply not chosen
    return (logits.double() / temperature - exp_noise.log_()).argmax(-1)


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


def _check_args(
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
    generator: torch.Generator | None,
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
    if generator is None and (temperature > 0 or remasking == "random"):
        raise ValueError("sampling with temperature > 0 or random remasking needs an explicit torch.Generator")
    if stop_at_eos and eos_id is None:
        raise ValueError("stop_at_eos needs eos_id")


def _propose(
    logits: torch.Tensor,
    block_masked: torch.Tensor,
    *,
    mask_id: int,
    remasking: str,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A token for every block position and the confidence that ranks it (-inf where already decoded).

    Confidence is the model's probability of the proposed token (low_confidence, threshold), or uniform
    noise (random remasking).

    Args:
        logits: (B, Lb, V). block_masked: (B, Lb) bool. Returns proposal (B, Lb) long, confidence (B, Lb) float.
    """
    logits = logits.float().clone()
    logits[..., mask_id] = -torch.inf  # a decoded token is never the mask token (an untrained model may prefer it)
    proposal = gumbel_argmax(logits, temperature=temperature, generator=generator)
    if remasking == "random":
        confidence = torch.rand(block_masked.shape, generator=generator, device=logits.device)
    else:
        probs = torch.softmax(logits, dim=-1)
        confidence = probs.gather(-1, proposal[..., None]).squeeze(-1)  # p(proposed token)
    return proposal, confidence.masked_fill(~block_masked, -torch.inf)


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
        generator: source of the Gumbel noise and of random remasking; None only for greedy decoding.
    """
    _check_args(
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
        generator=generator,
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
            logits = model(x, attn, positions=slice(lo, hi))  # (B, Lb, V): the block's logits only
            nfe += 1
            row_nfe += (block_masked.any(-1) & ~finished).long()
            proposal, confidence = _propose(
                logits, block_masked, mask_id=mask_id, remasking=remasking, temperature=temperature, generator=generator
            )  # (B, Lb) each
            if schedule is not None:
                transfer = top_k_mask(confidence, k)
            else:
                most_confident = top_k_mask(confidence, torch.ones(batch, dtype=torch.long, device=device))
                transfer = (confidence >= threshold) | most_confident
            transfer &= block_masked  # (B, Lb)
            x[:, lo:hi] = torch.where(transfer, proposal, x[:, lo:hi])
            if stop_at_eos:
                finished = rows_finished(x[:, prompt_length:], mask_id=mask_id, eos_id=eos_id)
                if bool(finished.all()):
                    x[:, prompt_length:] = x[:, prompt_length:].masked_fill(x[:, prompt_length:] == mask_id, eos_id)
                    return SampleOut(tokens=x, prompt_length=prompt_length, nfe=nfe, row_nfe=row_nfe)
    return SampleOut(tokens=x, prompt_length=prompt_length, nfe=nfe, row_nfe=row_nfe)


def sample(
    model: MaskedDiffusionLM,
    prompt_ids: torch.Tensor,
    cfg: SamplerConfig,
    *,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None,
) -> SampleOut:
    """``generate`` with the settings of a ``SamplerConfig`` and the special ids of ``model``."""
    return generate(
        model,
        prompt_ids,
        attention_mask=attention_mask,
        mask_id=model.mask_token_id,
        eos_id=model.eos_token_id,
        gen_length=cfg.gen_length,
        block_length=cfg.block_length,
        steps=cfg.steps,
        remasking=cfg.remasking,
        temperature=cfg.temperature,
        threshold=cfg.threshold,
        stop_at_eos=cfg.stop_at_eos,
        generator=generator,
    )
