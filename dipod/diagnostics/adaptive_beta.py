"""Adaptive DiPOD weight: keep the monitored gap log pi - ELBO near a budget, like PPO's adaptive KL.

PPO's adaptive KL coefficient doubles when the measured KL exceeds 1.5x its target and halves when
it falls below target / 1.5. Here the measured quantity is the drift monitor's gap: when the bound
has loosened past ``budget`` the self-distillation term gets more weight, and when it is well inside
the budget (below budget / 1.5) the weight is given back to the policy gradient.
"""

from __future__ import annotations

import math

from dipod.config import AdaptiveBetaConfig


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


__all__ = ["AdaptiveBetaConfig", "adapt_beta"]
