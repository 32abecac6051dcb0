"""FPO++ for flow policies: per-draw CFM ratios, straight-through clamp, and the ASPO trust region."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from dipod.objectives.params import ClipParams
from dipod.types import LossOut

TrustRegion = Literal["aspo", "ppo"]


class FpoPPParams(ClipParams):
    """FPO++ settings. Its one clip parameter c is ``clip_high``; ``clip_low`` must equal it."""

    name: Literal["fpo_pp"] = "fpo_pp"
    log_ratio_max: float = Field(3.0, gt=0)
    """Straight-through clamp on the per-draw log ratio."""
    neg_adv_cfm_clamp: float | None = Field(20.0, gt=0)
    """Clamp on the current CFM loss for negative advantages (None disables)."""
    trust_region: TrustRegion = "aspo"
    """ASPO (PPO clip for A > 0, SPO for A < 0) or plain PPO clipping."""

    @model_validator(mode="after")
    def _one_clip(self) -> FpoPPParams:
        if self.clip_low != self.clip_high:
            raise ValueError(
                f"objective.name = 'fpo_pp' has one clip parameter c = objective.clip_high = {self.clip_high} and "
                f"would ignore objective.clip_low = {self.clip_low}; set both to the same value"
            )
        return self


def straight_through_clamp_max(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """min(x, max_value) in value, identity in gradient (FPO++'s clamp_ste)."""
    return x + (x.clamp(max=max_value) - x).detach()


def fpo_pp_loss(
    cfm_new: torch.Tensor,
    cfm_old: torch.Tensor,
    adv: torch.Tensor,
    *,
    clip: float = 0.01,
    log_ratio_max: float = 3.0,
    neg_adv_cfm_clamp: float | None = 20.0,
    trust_region: TrustRegion = "aspo",
) -> LossOut:
    """FPO++ surrogate on per-draw ratios r_i = exp(clamp_ste(l_old,i - l_new,i, max=log_ratio_max)).

    - For A < 0 the current CFM loss is clamped at ``neg_adv_cfm_clamp`` first: past it, pushing the
      loss up (the only way to lower the ratio) stops paying, so a bad sample cannot blow up the net.
    - ASPO: PPO clipping for A > 0, the SPO form -(r A - |A| / (2c) (r - 1)^2) for A < 0, whose
      quadratic penalty keeps r near 1 without a hard zero-gradient region. ``ppo`` clips both signs.

    Args:
        cfm_new: (B, N) per-draw CFM losses of the current policy, with gradient.
        cfm_old: (B, N) the same draws' losses at rollout time.
        adv: (B,) advantages.
    Stats: ``pg_loss``, ``ratio_mean``, ``clip_frac``, ``elbo_mean``; ``elbo`` is -mean_N l_new.
    """
    a = adv[:, None]  # (B, 1)
    cfm_cur = cfm_new
    if neg_adv_cfm_clamp is not None:
        cfm_cur = torch.where(a < 0, cfm_new.clamp(max=neg_adv_cfm_clamp), cfm_new)
    log_ratio = straight_through_clamp_max(cfm_old.detach() - cfm_cur, log_ratio_max)  # (B, N)
    ratio = log_ratio.exp()
    ppo_term = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - clip, 1.0 + clip))  # (B, N)
    if trust_region == "aspo":
        spo_term = -(ratio * a - a.abs() / (2.0 * clip) * (ratio - 1.0).pow(2))
        per_draw = torch.where(a > 0, ppo_term, spo_term)
    elif trust_region == "ppo":
        per_draw = ppo_term
    else:
        raise ValueError(f"unknown trust_region {trust_region!r}; expected 'aspo' or 'ppo'")
    pg_loss = per_draw.mean()
    elbo = -cfm_new.mean(-1)  # (B,)
    with torch.no_grad():
        clipped = ((a > 0) & (ratio > 1.0 + clip)) | ((a < 0) & (ratio < 1.0 - clip))
        if trust_region == "aspo":
            clipped = clipped & (a > 0)
        stats = {
            "pg_loss": pg_loss.detach(),
            "ratio_mean": ratio.mean(),
            "clip_frac": clipped.float().mean(),
            "elbo_mean": elbo.mean(),
        }
    return LossOut(loss=pg_loss, stats=stats, elbo=elbo)
