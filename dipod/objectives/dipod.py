"""DiPOD's on-policy ELBO term: a first-order self-distillation step folded into every PG update.

The term is -beta * (a mean of) the ELBO of the policy's own fresh rollouts. What beta weighs depends on
``scale``:

- ``sum`` (the release's, and the default): beta multiplies the mean per-sample ELBO exactly as the
  objective computed it. With d1/FPO's sequence-sum ELBO the term's value grows with completion length,
  and its weight against the PG term changes with the advantages' size (RESULTS.md: with Sudoku's small
  advantages beta = 0.05 dominates the update).
- ``mean``: beta multiplies the ELBO per token, sum_b ELBO_b / sum_b L_b over the batch, so beta is in nats
  per token whatever the completion length (what SPG's length-weighted per-token ELBO already does).
- ``normalized``: the ``sum`` term times the batch's mean |advantage| (detached), so beta is the term's
  weight *relative to the PG term*. The PG gradient is -mean_b(rho_b A_b grad ELBO_b), which scales with
  |A| and with whatever scale the objective's ELBO has (sequence sum: the length); the normalized term's
  gradient -beta * mean|A| * mean_b grad ELBO_b scales the same way, so their ratio (about beta at
  rho = 1) is the same at any completion length and any advantage scale.

Why mean |A| and not the PG loss's magnitude: with group-centred advantages the PG loss at rho = 1 is
-mean(A) = 0 exactly, and near 0 throughout the inner updates, so dividing by it would blow the term up
where it is least informative. mean |A| is the size of the per-sample weights the PG gradient carries.
A batch whose groups all have equal rewards has mean |A| = 0: no policy gradient, hence no drift to
correct, and the normalized term is 0 too.
"""

from __future__ import annotations

from typing import Literal

import torch

from dipod.types import LossOut

DipodScale = Literal["sum", "mean", "normalized"]


def advantage_scale(adv: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """() mean |A| over a whole rollout batch (weighted like the objective's mean), without gradient.

    Compute it once per rollout and pass it to every micro-batch's ``dipod_term(..., scale="normalized")``
    so that micro-batches (and processes, after averaging) share one normaliser.

    Args:
        adv: (B,) advantages. weights: (B,) optional, e.g. completion lengths for a per-token objective.
    """
    size = adv.detach().abs()
    if weights is None:
        return size.mean()
    weights = weights.to(size.dtype)
    return (weights * size).sum() / weights.sum().clamp(min=1e-12)


def dipod_term(
    elbo_fresh: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
    *,
    scale: DipodScale = "sum",
    lengths: torch.Tensor | None = None,
    elbo_scale: Literal["sum", "mean"] = "sum",
    adv_scale: float | torch.Tensor | None = None,
) -> LossOut:
    """-beta * (weighted) mean ELBO of the policy's own fresh rollouts, at the chosen ``scale``.

    Maximising the ELBO on on-policy samples pulls the variational gap log pi - ELBO back towards
    zero where the PG estimator needs it tight. ``elbo_fresh`` is the ELBO tensor the PG objective
    already computed (``LossOut.elbo``), so the term costs no forward pass.

    Scales (module docstring): ``sum`` -beta * mean_w(ELBO), the release's term, unchanged;
    ``mean`` -beta * sum_b ELBO_b / sum_b L_b with ELBO_b the sequence bound (needs ``lengths``; the
    length weighting replaces ``weights``); ``normalized`` -beta * adv_scale * mean_w(ELBO) (needs
    ``adv_scale`` from ``advantage_scale``; pass the ELBO and weights the objective used).

    Args:
        elbo_fresh: (B,) with gradient.
        weights: (B,) optional, e.g. completion lengths for SPG's length-weighted mean of a per-token ELBO.
        lengths: (B,) scored tokens per completion (``scale="mean"``).
        elbo_scale: whether ``elbo_fresh`` is the sequence sum or already per token (``scale="mean"``).
        adv_scale: () mean |A| of the rollout batch, no gradient (``scale="normalized"``).
    Stats: ``dipod_reg``, the term's value in the loss.
    """
    if scale == "mean":
        if lengths is None:
            raise ValueError("dipod scale 'mean' needs lengths, the (B,) scored tokens per completion")
        if weights is not None:
            raise ValueError("dipod scale 'mean' weights every completion by its length; do not pass weights")
        if elbo_scale not in ("sum", "mean"):
            raise ValueError(f"unknown ELBO scale {elbo_scale!r}; expected 'sum' or 'mean'")
        lengths = lengths.to(elbo_fresh.dtype)
        seq = elbo_fresh if elbo_scale == "sum" else elbo_fresh * lengths  # (B,) sequence bound
        term = -beta * seq.sum() / lengths.sum().clamp(min=1)  # no token at all: 0, not NaN
        return LossOut(loss=term, stats={"dipod_reg": term.detach()})
    if scale not in ("sum", "normalized"):
        raise ValueError(f"unknown dipod scale {scale!r}; expected 'sum', 'mean' or 'normalized'")
    if weights is None:
        mean_elbo = elbo_fresh.mean()
    else:
        weights = weights.to(elbo_fresh.dtype)
        mean_elbo = (weights * elbo_fresh).sum() / weights.sum().clamp(min=1e-12)
    term = -beta * mean_elbo
    if scale == "normalized":
        if adv_scale is None:
            raise ValueError("dipod scale 'normalized' needs adv_scale = advantage_scale(adv) of the rollout batch")
        term = term * torch.as_tensor(adv_scale, dtype=term.dtype, device=term.device).detach()
    return LossOut(loss=term, stats={"dipod_reg": term.detach()})
