"""Guarded optimiser steps: a non-finite loss or gradient skips the update instead of poisoning the weights."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def loss_is_finite(loss: torch.Tensor) -> bool:
    """Whether a scalar loss may be back-propagated."""
    return bool(torch.isfinite(loss.detach()).all())


def clip_and_step(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], max_grad_norm: float | None
) -> tuple[bool, float]:
    """Clip the global gradient norm and step, unless the gradient is non-finite.

    Returns (applied, grad_norm). A skipped step leaves parameters and optimiser state untouched and
    clears the gradients, so the caller can count it and carry on.
    """
    params = [p for p in params if p.grad is not None]
    max_norm = math.inf if max_grad_norm is None else max_grad_norm
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return False, grad_norm
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True, grad_norm
