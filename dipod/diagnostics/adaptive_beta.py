"""Adaptive DiPOD weight: keep the monitored gap log pi - ELBO near a budget, like PPO's adaptive KL.

PPO's adaptive KL coefficient doubles when the measured KL exceeds 1.5x its target and halves when
it falls below target / 1.5. Here the measured quantity is the drift monitor's gap: when the bound
has loosened past ``budget`` the self-distillation term gets more weight, and when it is well inside
the budget (below budget / 1.5) the weight is given back to the policy gradient.

``adapt_beta`` is that rule on the gap alone. ``TwoSignalBeta`` adds a collapse signal (the entropy of the
policy's choices, or the within-group reward spread), because a collapsed policy is trivially tight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dipod.diagnostics.health import RunStartReference, relative_drop


@dataclass(frozen=True)
class AdaptiveBetaConfig:
    """Settings of the adaptive rule."""

    budget: float
    """Gap (nats) the run tolerates on its own samples."""
    factor: float = 2.0
    """Multiplier applied per adjustment (> 1)."""
    beta_min: float = 1e-3
    beta_max: float = 1.0
    hysteresis: float = 1.5
    """Below budget / hysteresis the weight shrinks; between the two thresholds it stays."""

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"budget must be > 0, got {self.budget}")
        if not self.factor > 1:
            raise ValueError(f"factor must be > 1, got {self.factor}")
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")
        if not self.hysteresis >= 1:
            raise ValueError(f"hysteresis must be >= 1, got {self.hysteresis}")


def adapt_beta(beta: float, measured_gap: float, cfg: AdaptiveBetaConfig) -> float:
    """The next DiPOD weight given the latest measured gap.

    gap > budget -> beta * factor; gap < budget / hysteresis -> beta / factor; else unchanged;
    always clamped to [beta_min, beta_max]. A non-finite measurement leaves beta as it was (clamped).
    """
    if math.isfinite(measured_gap):
        if measured_gap > cfg.budget:
            beta = beta * cfg.factor
        elif measured_gap < cfg.budget / cfg.hysteresis:
            beta = beta / cfg.factor
    return min(max(beta, cfg.beta_min), cfg.beta_max)


# ------------------------------------------------------------------------------ gap + collapse signal


class TwoSignalBetaConfig(BaseModel):
    """Adaptive DiPOD weight driven by the gap and a collapse signal (YAML-configurable, strict).

    The gap alone cannot tell a tight bound from a collapsed policy: a deterministic policy is trivially
    tight, and a policy emitting only EOS can show any gap. Self-distilling a collapsing policy on its own
    samples entrenches the collapse, so while the collapse signal is on, beta never grows.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    budget: float = Field(gt=0)
    """Gap log pi - ELBO (nats, as ``drift/gap`` reports it) the run tolerates on its own samples."""
    factor: float = Field(2.0, gt=1)
    """Multiplier applied per adjustment: PPO's adaptive-KL factor."""
    beta_min: float = Field(1e-3, ge=0)
    """Lower clamp; 0 lets the controller switch the term off."""
    beta_max: float = Field(1.0, gt=0)
    """Upper clamp: a runaway weight would turn the update into pure self-distillation."""
    hysteresis: float = Field(1.5, ge=1)
    """Below budget / hysteresis the weight shrinks; between the two thresholds it stays (PPO's 1.5)."""
    reference_steps: int = Field(3, ge=1)
    """Steps whose mean token NLL is the run-start entropy reference."""
    max_entropy_drop: float | None = Field(0.5, gt=0, le=1)
    """Collapsing when the chosen tokens' NLL (``health/token_nll``, the entropy estimate) has fallen by more
    than this fraction of its start. Half the alarm's default (0.9): the controller should stop pushing well
    before the run has to be stopped. None ignores this signal."""
    max_zero_std_ratio: float | None = Field(0.8, gt=0, le=1)
    """Collapsing when more than this fraction of groups have all-equal rewards (``health/zero_std_ratio``):
    the within-group reward spread that the PG term learns from is mostly gone. None ignores this signal."""
    on_collapse: Literal["shrink", "hold"] = "shrink"
    """While collapsing, divide beta by ``factor`` at each measurement, or only stop it from growing."""

    @model_validator(mode="after")
    def _ordered(self) -> TwoSignalBetaConfig:
        if self.beta_min > self.beta_max:
            raise ValueError(f"need beta_min <= beta_max, got {self.beta_min} > {self.beta_max}")
        return self


class TwoSignalBeta:
    """Stateful adaptive DiPOD weight: the gap rule of ``adapt_beta``, overruled by a collapse signal.

    Call ``update`` every training step with the step's ``health/token_nll`` and ``health/zero_std_ratio``
    (NaN where not measured) and the gap when the drift probe ran (NaN otherwise). beta changes only at steps
    with a finite gap, like PPO's adaptive KL changes only when the KL is measured:

        collapsing            -> beta / factor ("shrink") or beta ("hold")
        gap > budget          -> beta * factor
        gap < budget / h      -> beta / factor
        otherwise             -> beta,                          clamped to [beta_min, beta_max].

    The entropy reference accumulates from every step, so it does not depend on the probe's interval.
    ``state_dict`` / ``load_state_dict`` make a resumed run follow the same betas.
    """

    def __init__(self, cfg: TwoSignalBetaConfig, beta: float) -> None:
        self.cfg = cfg
        self.beta = min(max(float(beta), cfg.beta_min), cfg.beta_max)
        self.entropy_ref = RunStartReference()
        self.collapsing = False

    def _collapsing(self, token_nll: float, zero_std_ratio: float) -> bool:
        c = self.cfg
        entropy_drop = relative_drop(token_nll, self.entropy_ref.value(c.reference_steps))
        by_entropy = c.max_entropy_drop is not None and entropy_drop > c.max_entropy_drop  # NaN: False
        by_spread = c.max_zero_std_ratio is not None and zero_std_ratio > c.max_zero_std_ratio
        return by_entropy or by_spread

    def update(self, gap: float = math.nan, *, token_nll: float = math.nan, zero_std_ratio: float = math.nan) -> float:
        """Take one step's measurements and return the DiPOD weight for the next step."""
        c = self.cfg
        self.entropy_ref.add(token_nll, c.reference_steps)
        self.collapsing = self._collapsing(token_nll, zero_std_ratio)
        if math.isfinite(gap):
            if self.collapsing:
                self.beta = self.beta / c.factor if c.on_collapse == "shrink" else self.beta
            elif gap > c.budget:
                self.beta = self.beta * c.factor
            elif gap < c.budget / c.hysteresis:
                self.beta = self.beta / c.factor
        self.beta = min(max(self.beta, c.beta_min), c.beta_max)
        return self.beta

    def metrics(self) -> dict[str, float]:
        """The weight in force and whether the collapse signal is on (for the metrics row)."""
        return {"dipod_beta": self.beta, "dipod_beta_collapsing": float(self.collapsing)}

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON- and torch.save-safe)."""
        ref = self.entropy_ref
        return {
            "beta": self.beta,
            "entropy_ref": {"total": ref.total, "count": ref.count},
            "collapsing": self.collapsing,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``."""
        self.beta = float(state["beta"])
        ref = state["entropy_ref"]
        self.entropy_ref = RunStartReference(float(ref["total"]), int(ref["count"]))
        self.collapsing = bool(state["collapsing"])
