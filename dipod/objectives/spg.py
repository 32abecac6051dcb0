"""SPG: sandwiched policy gradient, ELBO for positive advantages and EUBO (or a mixture) for the rest."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dipod.bounds.masked import mixture_bound
from dipod.objectives.params import ObjectiveParams
from dipod.types import LossOut


class SpgParams(ObjectiveParams):
    """SPG settings. SPG has no ratio, no clipping and no reference term."""

    name: Literal["spg"] = "spg"
    elbo_scale: Literal["mean"] = "mean"
    """SPG scores per-token bounds (fixed; the key is accepted so configs can say so)."""
    mix_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the EUBO in the negative-advantage mixture (1 = pure EUBO)."""
    eubo_beta: float = Field(1.5, gt=0)
    """Renyi power beta_E of the EUBO proxy."""


def spg_loss(
    elbo: torch.Tensor,
    eubo: torch.Tensor,
    adv: torch.Tensor,
    lengths: torch.Tensor,
    *,
    mix_weight: float = 0.5,
) -> LossOut:
    """Length-weighted SPG loss sum_b(-A_b * score_b * len_b) / sum_b len_b, as the release computes it.

    score = ELBO where A > 0 and ``mix_weight * EUBO + (1 - mix_weight) * ELBO`` where A <= 0
    (mix_weight = 1 is pure EUBO). A lower bound pushed down could be lowered by loosening it, so the
    negative side uses an upper bound. No ratio and no clipping.

    Args:
        elbo, eubo: (B,) per-token ("mean" scale) bounds of the current policy, with gradient.
        adv: (B,). lengths: (B,) valid completion lengths.
    """
    lengths = lengths.to(elbo.dtype)
    score = torch.where(adv > 0, elbo, mixture_bound(elbo, eubo, mix_weight))  # (B,)
    pg_loss = (-adv * score * lengths).sum() / lengths.sum().clamp(min=1)
    with torch.no_grad():
        stats = {
            "pg_loss": pg_loss.detach(),
            "elbo_mean": elbo.mean(),
            "eubo_mean": eubo.mean(),
            "ratio_mean": torch.ones((), device=elbo.device),
            "clip_frac": torch.zeros((), device=elbo.device),
        }
    return LossOut(loss=pg_loss, stats=stats, elbo=elbo)
