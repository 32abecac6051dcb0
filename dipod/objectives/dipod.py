"""DiPOD's on-policy ELBO term: a first-order self-distillation step folded into every PG update."""

from __future__ import annotations

import torch

from dipod.types import LossOut


def dipod_term(elbo_fresh: torch.Tensor, beta: float, weights: torch.Tensor | None = None) -> LossOut:
    """-beta * (weighted) mean ELBO of the policy's own fresh rollouts.

    Maximising the ELBO on on-policy samples pulls the variational gap log pi - ELBO back towards
    zero where the PG estimator needs it tight. ``elbo_fresh`` is the ELBO tensor the PG objective
    already computed (``LossOut.elbo``), so the term costs no forward pass.

    Args:
        elbo_fresh: (B,) with gradient.
        weights: (B,) optional, e.g. completion lengths for SPG's length-weighted mean of a per-token ELBO.
    Stats: ``dipod_reg``, the term's value in the loss.
    """
    if weights is None:
        mean_elbo = elbo_fresh.mean()
    else:
        weights = weights.to(elbo_fresh.dtype)
        mean_elbo = (weights * elbo_fresh).sum() / weights.sum().clamp(min=1e-12)
    term = -beta * mean_elbo
    return LossOut(loss=term, stats={"dipod_reg": term.detach()})
