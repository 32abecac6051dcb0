"""ELBO-ratio PPO (FPO): PPO's clipped surrogate with rho = exp(ELBO_new - ELBO_old) per sample."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dipod.objectives.params import ClipParams, ReferenceParams
from dipod.types import LossOut


class FpoParams(ClipParams, ReferenceParams):
    """FPO on a masked diffusion LM's ELBO (language)."""

    name: Literal["fpo"] = "fpo"
    elbo_scale: Literal["sum", "mean"] = "sum"
    """ELBO scale: sequence sum (d1 and the release's FPO) or per-token mean."""
    kl_type: Literal["elbo_difference", "elbo_k3"] = "elbo_difference"
    """The reference term: the release's kl_beta * mean(ELBO_theta - ELBO_ref), linear in the ELBO (its gradient
    is a DiPOD term's with beta = -kl_beta), or ``elbo_k3``, k3 of the per-token ELBO difference, a divergence."""


class FpoFlowParams(ClipParams):
    """FPO on a flow policy's CFM ELBO (control)."""

    name: Literal["fpo"] = "fpo"


class PpoParams(ClipParams):
    """PPO on exact log-likelihoods: the Gaussian baseline of control, which has no ELBO to regularise."""

    name: Literal["ppo"] = "ppo"
    dipod_beta: float = Field(0.0, ge=0, le=0)
    """Always 0: an exact log-likelihood has no bound for DiPOD to keep tight."""


def ratio_ppo_loss(
    elbo_new: torch.Tensor,
    elbo_old: torch.Tensor,
    adv: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> LossOut:
    """Clipped surrogate -mean min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A).

    With exact log-likelihoods in place of ELBOs this is PPO itself (the Gaussian baseline uses it so).
    Under common random numbers rho == 1 before the first update, and the gradient is mean(A * grad ELBO).

    Args:
        elbo_new: (B,) ELBO of the current policy, with gradient.
        elbo_old: (B,) ELBO of the rollout policy on the same draws, no gradient.
        adv: (B,) advantages.
    Stats: ``pg_loss``, ``ratio_mean``, ``clip_frac`` (share of samples whose clipped branch is
    active, i.e. whose gradient is zeroed), ``approx_kl`` (k3 estimate), ``elbo_mean``, and three that stay
    readable when one sample's ratio explodes (a fresh head can give ELBO differences of 30+ nats, so
    ``ratio_mean`` and ``approx_kl`` reach 1e13 while clipping holds): ``log_ratio_mean``, ``approx_kl_k2``
    (the k2 estimate mean(log_ratio^2) / 2, quadratic rather than exponential in the log-ratio) and
    ``clipped_ratio_mean`` (the mean of clip(rho, 1 - clip_low, 1 + clip_high)). All are means, so they
    combine over micro-batches and processes as the trainer's other statistics do.
    """
    log_ratio = elbo_new - elbo_old.detach()  # (B,)
    ratio = log_ratio.exp()
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg_loss = -torch.minimum(ratio * adv, clipped_ratio * adv).mean()
    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
        stats = {
            "pg_loss": pg_loss.detach(),
            "ratio_mean": ratio.mean(),
            "clip_frac": clipped.float().mean(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "log_ratio_mean": log_ratio.mean(),
            "approx_kl_k2": 0.5 * log_ratio.pow(2).mean(),
            "clipped_ratio_mean": clipped_ratio.mean(),
            "elbo_mean": elbo_new.mean(),
        }
    return LossOut(loss=pg_loss, stats=stats, elbo=elbo_new)
