"""The K-draw scoring forward + backward in chunks of draws: exact gradients at one chunk's activation memory.

A loss built on K masking draws per completion (FPO's ELBO ratio, SPG's EUBO, the DiPOD term) needs every
draw's token log-probs before its value is known, and it is not linear in them (exp, clip, logsumexp), so the
draws cannot simply be back-propagated one chunk at a time. Two passes make it exact:

1. score every chunk of draws but the last without a graph, and the last with one; build the loss from all
   of them, with the early chunks' log-probs as a leaf tensor, and back-propagate it once: the last chunk's
   gradient reaches the parameters, and the leaf receives dLoss/d(token log-probs) of the early chunks;
2. score each early chunk again, now with a graph, and back-propagate it with that upstream gradient.

By the chain rule, dLoss/dtheta = sum over chunks of (dLoss/d logp_chunk) . (d logp_chunk/dtheta), so the
parameters' ``.grad`` accumulates the unchunked gradient; only one chunk's activations are alive at a time.
The price is one forward pass without graph per early chunk (K/c - 1 of them for chunks of c draws).
Random draws inside the model (dropout) are replayed: each early chunk's recomputation sees the random state
its first pass saw, and the state after the call is the one the first pass left.

Shape legend: B completions, K draws, k draws in a chunk, L completion length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from dipod.bounds.masked import MaskDraws
from dipod.types import LossOut

ScoreFn = Callable[[MaskDraws], torch.Tensor]
"""Draws of a chunk (B, k, ...) -> their token log-probs (B, k, L), with gradient when it is enabled."""

LossFn = Callable[[torch.Tensor], LossOut]
"""Token log-probs of all draws (B, K, L) -> the loss (scalar, differentiable in them) and its stats."""


def draw_chunks(num_draws: int, chunk_size: int | None) -> list[slice]:
    """Consecutive slices of at most ``chunk_size`` draws covering K; one slice when ``chunk_size`` is None."""
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    step = num_draws if chunk_size is None else chunk_size
    return [slice(start, min(start + step, num_draws)) for start in range(0, num_draws, step)]


def chunked_draws_backward(
    score_fn: ScoreFn,
    loss_fn: LossFn,
    draws: MaskDraws,
    *,
    chunk_size: int | None,
    loss_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> LossOut:
    """Compute ``loss_fn(score_fn(draws))`` and accumulate ``loss_scale`` times its gradient into ``.grad``,
    holding the graph of at most ``chunk_size`` draws at a time.

    Args:
        score_fn: scores a subset of the draws (``draws.select``), e.g. ``masked_token_logprobs`` of the
            policy on the micro-batch; it must be deterministic given the random state (dropout is replayed).
        loss_fn: the objective on all K draws' token log-probs (objective + DiPOD + reference terms).
        draws: (B, K, L) the stored draws of the micro-batch.
        chunk_size: draws per forward pass; None or >= K is the plain one-pass forward + backward.
        loss_scale: the backward pass uses ``loss * loss_scale`` (a micro-batch's share of the batch); the
            returned loss is unscaled.
        no_sync: DDP's ``model.no_sync`` for a micro-batch whose gradients are to be all-reduced: every chunk's
            forward + backward but the final one then runs inside it, so the gradients are all-reduced once,
            when the final one completes them (DDP reads the flag in forward). Leave it None for a
            micro-batch already inside ``no_sync()``, and on one process.
    Returns:
        The ``LossOut`` of ``loss_fn`` with the loss and ELBO detached (the gradient is already in ``.grad``).
        The backward passes run whatever the loss value: a caller that skips a non-finite step discards the
        gradients (``optimizer.zero_grad``), which is what skipping the backward would have left.

    The backward passes are plain autograd (``Tensor.backward``), as ``accelerator.backward`` is on one process
    and under DDP (tested with two processes); a DeepSpeed engine or fp16 loss scaling wants its own backward
    call, so keep ``chunk_size`` None there.

    Exactness needs the recomputed scores to equal the first pass's bit for bit (deterministic forward kernels,
    as on CPU and for cuBLAS matmuls); otherwise the gradient is taken at values that differ by rounding.
    """
    chunks = draw_chunks(draws.num_draws, chunk_size)
    if len(chunks) == 1:
        out = loss_fn(score_fn(draws))
        (out.loss * loss_scale).backward()
        return _detached(out)
    *early, last = chunks
    device = draws.mask.device
    quiet = no_sync if no_sync is not None else contextlib.nullcontext
    states, pieces = [], []
    with torch.no_grad():
        for chunk in early:
            states.append(_rng_state(device))
            pieces.append(score_fn(draws.select(chunk)))  # (B, k, L) values only
    leaf = torch.cat(pieces, dim=1).requires_grad_()  # (B, K - k_last, L)
    with quiet():
        token_logp = torch.cat([leaf, score_fn(draws.select(last))], dim=1)  # (B, K, L): last chunk with its graph
        out = loss_fn(token_logp)
        (out.loss * loss_scale).backward()  # the last chunk's parameter gradient, and dLoss/dleaf
    upstream = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)  # (B, K - k_last, L)
    after = _rng_state(device)
    try:
        for i, (chunk, state) in enumerate(zip(early, states, strict=True)):
            _set_rng_state(state, device)
            with quiet() if i < len(early) - 1 else contextlib.nullcontext():
                logp = score_fn(draws.select(chunk))  # (B, k, L) again, with its graph
                logp.backward(upstream[:, chunk])
    finally:
        _set_rng_state(after, device)
    return _detached(out)


def _detached(out: LossOut) -> LossOut:
    elbo = None if out.elbo is None else out.elbo.detach()
    return LossOut(out.loss.detach(), out.stats, elbo)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU random state, and the device's when the scores live on an accelerator."""
    accel = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), accel


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    cpu, accel = state
    torch.set_rng_state(cpu)
    if accel is not None:
        torch.cuda.set_rng_state(accel, device)
