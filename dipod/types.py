"""Small value types shared by the math and the trainers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOut:
    """A differentiable loss and the detached statistics that describe it.

    `stats` keys are the run-directory metric names (``pg_loss``, ``ratio_mean``, ``clip_frac``,
    ``elbo_mean``, ``dipod_reg``, ...), so trainers log them as they are.
    """

    loss: torch.Tensor
    """Scalar loss to minimise."""
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached scalar statistics."""
    elbo: torch.Tensor | None = None
    """(B,) per-sample ELBO of the current policy with gradient, when the objective computed one.

    The DiPOD term reuses it, so adding the term costs no extra forward pass."""

    def __add__(self, other: LossOut) -> LossOut:
        elbo = self.elbo if self.elbo is not None else other.elbo
        return LossOut(self.loss + other.loss, {**self.stats, **other.stats}, elbo)
