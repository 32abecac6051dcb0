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
from typing import Any

from dipod.config import AdaptiveBetaConfig
from dipod.diagnostics.health import RunStartReference, relative_drop


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

    def __init__(self, cfg: AdaptiveBetaConfig, beta: float) -> None:
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
