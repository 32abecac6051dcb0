"""Small value types shared by the math and the trainers, and the Trainer protocol the run loop drives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class Trainer(Protocol):
    """What the run loop needs from a domain's trainer (``LanguageTrainer``, ``ControlTrainer``).

    Every metric dict uses the run-directory keys (``reward_mean``, ``loss``, ``pg_loss``, ``dipod_reg``,
    ``elbo_mean``, ``ratio_mean``, ``clip_frac``, ``grad_norm``, ...). ``train_step`` also reports
    ``updates`` (optimiser updates attempted) and ``skipped_updates`` (those dropped for a non-finite
    loss or gradient), from which the loop counts bad steps.
    """

    step: int
    """Policy-improvement steps done."""
    samples: int
    """Completions (language) or env steps (control) consumed so far."""

    def train_step(self) -> dict[str, float]:
        """One policy-improvement step: rollout, then the inner updates."""
        ...

    def evaluate(self) -> dict[str, float]:
        """``eval/<metric>`` on the fixed evaluation set or fresh episodes; training state untouched."""
        ...

    def drift_probe(self) -> dict[str, float]:
        """``drift/elbo``, ``drift/loglik``, ``drift/gap``, ``drift/grad_cosine`` on a probe batch of fresh
        samples, drawn from the probe's own random streams (training is the same with or without it)."""
        ...

    def set_dipod_beta(self, beta: float) -> None:
        """Change DiPOD's weight for the following updates (adaptive beta)."""
        ...

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit."""
        ...

    def load_state_dict(self, state: dict, *, restore_envs: bool = True) -> None:
        """Restore a ``state_dict()``. ``restore_envs=False`` skips what only training needs (a control
        trainer's env snapshots), for evaluation."""
        ...

    def close(self) -> None:
        """Release what the trainer holds open (vector-env worker processes)."""
        ...
