"""Terms that keep the policy near a reference policy (the pretrained model, adapter disabled)."""

from __future__ import annotations

import torch

from dipod.types import LossOut


def elbo_difference_penalty(elbo_new: torch.Tensor, elbo_ref: torch.Tensor, beta: float) -> LossOut:
    """The d1/FPO release's reference term beta * mean(ELBO_new - ELBO_ref).

    It is linear in ELBO_new, so its gradient +beta * grad ELBO pushes the bound *down*; with the
    release's beta = 0.04 it partly cancels DiPOD's -0.05 * ELBO. Kept for faithful comparisons.
    """
    diff = (elbo_new - elbo_ref.detach()).mean()
    return LossOut(loss=beta * diff, stats={"kl_ref": diff.detach()})


def k3_kl(token_logp_new: torch.Tensor, token_logp_ref: torch.Tensor, valid: torch.Tensor, beta: float) -> LossOut:
    """beta * k3 KL estimate exp(r) - r - 1, r = log p_ref - log p_new (Schulman's k3), averaged over all
    valid tokens of the batch like diffu-GRPO's surrogate, to which d1 adds it per token.

    Args:
        token_logp_new, token_logp_ref: (B, L). valid: (B, L) bool.
    """
    r = token_logp_ref.detach() - token_logp_new
    per_token = r.exp() - r - 1.0  # (B, L), >= 0
    weights = valid.float()
    kl = (per_token * weights).sum() / weights.sum().clamp(min=1)
    return LossOut(loss=beta * kl, stats={"kl_ref": kl.detach()})


def elbo_k3_kl(elbo_new: torch.Tensor, elbo_ref: torch.Tensor, beta: float) -> LossOut:
    """beta * mean k3(r), r = ELBO_ref - ELBO_new per token: Schulman's k3 estimate exp(r) - r - 1 with the
    ELBO difference standing in for the log-ratio, a conventional reference term for an ELBO objective.

    Unlike ``elbo_difference_penalty`` it is a divergence: >= 0, zero with zero gradient where the two bounds
    agree, and its gradient (1 - exp(r)) * grad ELBO_new pulls the bound *towards* the reference's from either
    side instead of always down. Per-token ELBOs (sequence means) keep exp(r) in range.

    Args:
        elbo_new: (B,) per-token ELBO of the current policy, with gradient. elbo_ref: (B,) the reference's.
    """
    r = elbo_ref.detach() - elbo_new  # (B,)
    kl = (r.exp() - r - 1.0).mean()
    return LossOut(loss=beta * kl, stats={"kl_ref": kl.detach()})
