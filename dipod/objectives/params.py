"""What every objective's settings have in common; each objective adds its own small params model.

The ``objective:`` section of a run config is validated against the params model of the objective it
names, so a setting of another method (SPG's ``eubo_beta`` under FPO, say) is an error naming the key.
"""

from __future__ import annotations

from pydantic import Field

from dipod.config import Strict


class ObjectiveParams(Strict):
    """Base of every objective's settings: its registered name and DiPOD's weight."""

    name: str
    """Registered objective (``dipod.objectives.OBJECTIVES``)."""
    dipod_beta: float = Field(0.05, ge=0)
    """Weight of DiPOD's on-policy ELBO term; 0 gives the plain baseline."""


class ClipParams(ObjectiveParams):
    """PPO-style clipping of a likelihood (or bound) ratio."""

    clip_low: float = Field(0.2, gt=0, lt=1)
    """Lower PPO clip: ratios below 1 - clip_low stop paying for negative advantages."""
    clip_high: float = Field(0.2, gt=0)
    """Upper PPO clip."""


class ReferenceParams(Strict):
    """The reference-policy term of the language objectives (the release's ``beta`` = 0.04)."""

    kl_beta: float = Field(0.0, ge=0)
    """Weight of the reference term; the reference is a frozen copy of the initial model, or the model with
    its LoRA adapters disabled."""


def reference_weight(params: ObjectiveParams) -> float:
    """The reference term's weight of an objective's settings: its ``kl_beta``, or 0 for a method without one."""
    return params.kl_beta if isinstance(params, ReferenceParams) else 0.0
