"""Continuous batching for masked diffusion decoding: a queue of prompts decoded in a fixed number of slots.

A row that finishes frees its slot for the next waiting prompt, so rows move through their blocks
independently and the batch's NFE falls like the per-row NFE. Each row's noise comes from its own
counter-based stream (``counter_uniform``), so a row's tokens do not depend on its neighbours, the slot
count or the order of the queue. The decoding rules are ``dipod.language.sampler``'s.

Shape legend: N queued prompts, n live rows, P prompt length, L gen_length, Lb block_length, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dipod.language.models import MaskedDiffusionLM
from dipod.language.sampler import (
    BlockLogits,
    KVCache,
    Remasking,
    SampleOut,
    check_decoding_args,
    num_transfer_tokens,
    propose_tokens,
    row_uniforms,
    rows_finished,
    transfer_tokens,
)


@dataclass
class _Live:
    """The rows being decoded by ``generate_continuous``, one per occupied slot."""

    rows: torch.Tensor
    """(n,) long: queue index of each live row."""
    x: torch.Tensor
    """(n, P + L) long: prompt and completion so far."""
    attn: torch.Tensor
    """(n, P + L) bool."""
    seeds: torch.Tensor
    """(n,) long: each row's noise stream."""
    block: torch.Tensor
    """(n,) long: index of the row's current block."""
    step: torch.Tensor
    """(n,) long: forward passes the row has had in its current block."""
    nfe: torch.Tensor
    """(n,) long: forward passes the row has had in all (also its noise counter)."""

    FIELDS = ("rows", "x", "attn", "seeds", "block", "step", "nfe")

    @classmethod
    def admit(
        cls,
        rows: torch.Tensor,
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        seeds: torch.Tensor,
        *,
        gen_length: int,
        mask_id: int,
    ) -> _Live:
        """Fresh rows for the queued prompts ``rows`` ((k,) long): the prompt, then ``gen_length`` masks."""
        masks = torch.full((len(rows), gen_length), mask_id, dtype=torch.long, device=prompt_ids.device)  # (k, L)
        zeros = torch.zeros(len(rows), dtype=torch.long, device=prompt_ids.device)
        return cls(
            rows=rows,
            x=torch.cat([prompt_ids[rows], masks], 1),
            attn=torch.cat([attention_mask[rows], torch.ones_like(masks, dtype=torch.bool)], 1),
            seeds=seeds[rows],
            block=zeros,
            step=zeros.clone(),
            nfe=zeros.clone(),
        )

    def put(self, slots: torch.Tensor, new: _Live) -> None:
        """Overwrite the rows at ``slots`` ((k,) long) with ``new``'s k rows."""
        for name in self.FIELDS:
            getattr(self, name)[slots] = getattr(new, name)

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the rows where ``keep`` (n,) bool is False."""
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[keep])


@torch.no_grad()
def generate_continuous(
    model: MaskedDiffusionLM,
    prompt_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    mask_id: int,
    eos_id: int | None,
    gen_length: int,
    block_length: int,
    slots: int,
    steps: int | None = None,
    remasking: Remasking = "threshold",
    temperature: float = 0.0,
    threshold: float | None = None,
    stop_at_eos: bool = False,
    kv_cache: KVCache = "none",
    generator: torch.Generator | None,
    row_seeds: torch.Tensor | None = None,
) -> SampleOut:
    """Decode a queue of prompts with continuous batching: at most ``slots`` rows at once, refilled as rows finish.

    Each row follows the rules of ``generate`` alone (same blocks, schedule or threshold, EOS stop) and
    its noise comes from its own counter-based stream, so its tokens and NFE are those of decoding it
    alone with the same seed, whatever the slot count, its neighbours or its place in the queue (up to
    floating-point differences of the model's batched matmuls). A finished row's still-masked positions
    are filled with EOS (``stop_at_eos``) and its slot goes to the next waiting prompt; once the queue is
    empty the batch shrinks. Rows at different blocks are run together: exact, the model computes the
    span that covers their blocks; with a KV cache, each row's own block.

    Args:
        prompt_ids: (N, P) long, the whole queue, left-padded to one length.
        attention_mask: (N, P) bool, False on prompt padding.
        slots: rows decoded at once (the batch size of each forward pass), >= 1.
        generator: draws one seed per row (N,) when the decoding is random; None for greedy decoding.
        row_seeds: (N,) long, the per-row seeds themselves (instead of drawing them from ``generator``);
            decoding row i alone with ``row_seeds[i:i + 1]`` gives its tokens here.
        Others: as ``generate``.
    Returns:
        ``SampleOut`` with tokens (N, P + L) in queue order, ``nfe`` the batched forward passes of the whole
        queue and ``row_nfe`` (N,) those of each row.
    """
    needs_noise = temperature > 0 or remasking == "random"
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
        has_randomness=generator is not None or row_seeds is not None,
    )
    n_rows, prompt_length = prompt_ids.shape
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be a positive int, got {slots!r}")
    if row_seeds is not None and (row_seeds.shape != (n_rows,) or row_seeds.dtype != torch.long):
        raise ValueError(f"row_seeds must be a ({n_rows},) long tensor, got {tuple(row_seeds.shape)} {row_seeds.dtype}")
    device = prompt_ids.device
    if row_seeds is None:
        row_seeds = torch.zeros(n_rows, dtype=torch.long, device=device)
        if needs_noise:
            row_seeds = torch.randint(0, 2**62, (n_rows,), generator=generator, device=device)
    attention_mask = torch.ones_like(prompt_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    num_blocks = gen_length // block_length
    schedule = None  # every block starts fully masked, so the linear schedule is the same for every row and block
    if remasking != "threshold":
        full_block = torch.ones(1, block_length, dtype=torch.bool, device=device)
        schedule = num_transfer_tokens(full_block, steps // num_blocks)[0]  # (S,)
    tokens = torch.empty(n_rows, prompt_length + gen_length, dtype=torch.long, device=device)
    row_nfe = torch.zeros(n_rows, dtype=torch.long, device=device)
    forward = BlockLogits(model, kv_cache=kv_cache, block_length=block_length)
    within = torch.arange(block_length, device=device)  # (Lb,)

    def admit(rows: torch.Tensor) -> _Live:
        return _Live.admit(rows, prompt_ids, attention_mask, row_seeds, gen_length=gen_length, mask_id=mask_id)

    live = admit(torch.arange(min(slots, n_rows), device=device))
    waiting = len(live.rows)  # queue index of the next prompt to admit
    nfe = 0
    while len(live.rows):
        lo = prompt_length + live.block * block_length  # (n,)
        where = lo[:, None] + within  # (n, Lb) each row's block positions
        current = live.x.gather(1, where)  # (n, Lb)
        block_masked = current == mask_id  # (n, Lb): never all False, a finished block moves its row on
        logits = forward(live.x, live.attn, lo, live.step == 0)  # (n, Lb, V)
        nfe += 1
        noise = None
        if needs_noise:
            noise = row_uniforms(
                live.seeds, live.nfe, where - prompt_length, gen_length=gen_length, sample=temperature > 0
            )
        proposal, confidence = propose_tokens(
            logits, block_masked, mask_id=mask_id, remasking=remasking, temperature=temperature, noise=noise
        )  # (n, Lb) each
        k = None if schedule is None else schedule[live.step]  # (n,)
        transfer = transfer_tokens(confidence, block_masked, k=k, threshold=threshold)  # (n, Lb)
        live.x.scatter_(1, where, torch.where(transfer, proposal, current))
        live.nfe += 1
        live.step += 1
        block_done = ~(block_masked & ~transfer).any(-1)  # (n,)
        live.block += block_done.long()
        live.step.masked_fill_(block_done, 0)
        done = live.block == num_blocks  # (n,)
        if stop_at_eos:
            completion = live.x[:, prompt_length:]  # (n, L) a view
            finished = rows_finished(completion, mask_id=mask_id, eos_id=eos_id)
            completion.masked_fill_(finished[:, None] & (completion == mask_id), eos_id)
            done |= finished
        if not bool(done.any()):
            continue
        tokens[live.rows[done]] = live.x[done]
        row_nfe[live.rows[done]] = live.nfe[done]
        refill = done.nonzero().squeeze(-1)[: n_rows - waiting]  # (k,) slots that take a waiting prompt
        if len(refill):
            live.put(refill, admit(torch.arange(waiting, waiting + len(refill), device=device)))
            waiting += len(refill)
            done[refill] = False
        if bool(done.any()):  # the queue is empty: the batch shrinks
            keep = ~done
            live.keep(keep)
            forward.select(keep.nonzero().squeeze(-1))
    return SampleOut(tokens=tokens, prompt_length=prompt_length, nfe=nfe, row_nfe=row_nfe)
