"""diffu-GRPO (d1): token-level PPO on one-step log-probabilities under a random prompt mask."""

from __future__ import annotations

from typing import Literal

import torch

from dipod.objectives.params import ClipParams, ReferenceParams
from dipod.types import LossOut


class DiffuGrpoParams(ClipParams, ReferenceParams):
    """diffu-GRPO settings; its reference term is d1's k3 KL on the one-step token log-probs."""

    name: Literal["diffu_grpo"] = "diffu_grpo"
    kl_type: Literal["k3"] = "k3"
    """k3 KL on per-token log-probs (d1); one-step scores carry no ELBO for the release's ELBO difference."""


def diffu_grpo_loss(
    token_logp_new: torch.Tensor,
    token_logp_old: torch.Tensor,
    adv: torch.Tensor,
    valid: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> LossOut:
    """Per-token clipped surrogate, averaged over all valid tokens of the batch, as d1 does
    (``(per_token_loss * completion_mask).sum() / completion_mask.sum()``): longer completions weigh more.

    The log-probabilities are one-step estimates: every completion token predicted at once from a
    fully masked completion with a randomly masked prompt (the same masks for old and new).

    Args:
        token_logp_new: (B, L) with gradient. token_logp_old: (B, L). adv: (B,). valid: (B, L) bool.
    """
    log_ratio = token_logp_new - token_logp_old.detach()  # (B, L)
    ratio = log_ratio.exp()
    a = adv[:, None]
    per_token = -torch.minimum(ratio * a, ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * a)  # (B, L)
    weights = valid.float()
    n_tokens = weights.sum().clamp(min=1)
    pg_loss = (per_token * weights).sum() / n_tokens
    with torch.no_grad():
        clipped = ((a > 0) & (ratio > 1.0 + clip_high)) | ((a < 0) & (ratio < 1.0 - clip_low))
        stats = {
            "pg_loss": pg_loss.detach(),
            "ratio_mean": (ratio * weights).sum() / n_tokens,
            "clip_frac": (clipped.float() * weights).sum() / n_tokens,
        }
    return LossOut(loss=pg_loss, stats=stats)
