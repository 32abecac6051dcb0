"""The language drift probe: a masked diffusion LM's ELBO, its log-likelihood over unmasking orders, their
gap, and the cosine between the objective's proxy gradient and the true policy gradient.

The probe batch comes from the trainer's own rollout code and its draws from the one draw dispatch
(``dipod.language.draws``), so the probe measures exactly what training optimises.

Shape legend: B probe batch, K masking draws or orders, P prompt length, L completion length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from dipod.bounds.masked import (
    LogitsFn,
    MaskDraws,
    all_orders,
    any_order_loglik,
    elbo_from_logprobs,
    masked_token_logprobs,
    order_elbo,
    order_iw_loglik,
    random_orders,
)
from dipod.diagnostics.drift import gap, grad_cosine, true_pg_loss
from dipod.objectives import MaskedScores, ObjectiveParams, get_objective


def _exact_orders(valid: torch.Tensor, span: int) -> torch.Tensor:
    """(B, span!, L) every order of the first ``span`` positions, valid positions first, as ``any_order_loglik`` needs.

    Positions from ``span`` on are invalid in every row and come last. Moving the invalid positions of
    each permutation to the end (stable) keeps the valid positions in every relative order equally
    often, so the mean over these orders is the mean over the valid positions' orders.
    """
    batch, length = valid.shape
    head = all_orders(span, batch, valid.device)  # (B, span!, span)
    tail = torch.arange(span, length, device=valid.device).expand(batch, head.shape[1], -1)
    orders = torch.cat([head, tail], dim=-1)  # (B, span!, L)
    invalid = (~valid).long()[:, None, :].expand_as(orders).gather(-1, orders)  # (B, span!, L)
    return orders.gather(-1, invalid.argsort(dim=-1, stable=True))


def language_order_logliks(
    logits_fn: LogitsFn,
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    mask_id: int,
    num_orders: int,
    generator: torch.Generator,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, bool]:
    """(B, K) any-order AR log-likelihoods: every order when L! <= ``num_orders`` (exact), else K random ones.

    Returns (order log-likelihoods, exact). ``order_iw_loglik`` of them is log pi (exact) or the
    K-order importance-weighted bound; their mean is the ELBO (exact, or unbiased).
    """
    # Positions past the last valid one are never masked nor predicted, so only the first `span`
    # positions need enumerating (they stay in the input as context either way).
    span = int(valid.any(0).nonzero().max()) + 1 if bool(valid.any()) else 1
    exact = math.factorial(span) <= num_orders
    orders = _exact_orders(valid, span) if exact else random_orders(valid, num_orders, generator=generator)
    order_loglik = any_order_loglik(
        logits_fn, prompt_ids, completion_ids, valid, orders, mask_id=mask_id, attention_mask=attention_mask
    )  # (B, K)
    return order_loglik, exact


def language_loglik(
    logits_fn: LogitsFn,
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    mask_id: int,
    num_orders: int,
    generator: torch.Generator,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, bool]:
    """(B,) log pi(x | c): exact when every order fits in ``num_orders``, else the K-order IW bound.

    Returns (loglik, orders used, exact).
    """
    order_loglik, exact = language_order_logliks(
        logits_fn, prompt_ids, completion_ids, valid, mask_id=mask_id, num_orders=num_orders,
        generator=generator, attention_mask=attention_mask,
    )  # fmt: skip
    return order_iw_loglik(order_loglik), order_loglik.shape[1], exact


def language_drift_probe(
    logits_fn: LogitsFn,
    params: Iterable[torch.Tensor],
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    adv: torch.Tensor,
    objective_params: ObjectiveParams,
    draws: MaskDraws,
    *,
    mask_id: int,
    num_orders: int,
    generator: torch.Generator,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """Drift metrics of a masked diffusion LM on a probe batch of fresh completions with their advantages.

    - ``drift/elbo``: the ELBO as the mean over the same orders of the any-order AR log-likelihood
      (sequence sum; equal in expectation to the count-scheme ELBO). For ``fpo`` the method's own
      K-draw estimate is added as ``drift/elbo_mc``.
    - ``drift/loglik``: exact by enumerating orders when L! <= ``num_orders``, else the importance-
      weighted bound over ``num_orders`` random orders (``drift/num_orders`` records K, ``drift/exact`` 1/0).
    - ``drift/gap``: loglik - elbo, batch mean; >= 0 per sample. With K < L! orders it is the
      K-order estimate logmeanexp - mean, which under-estimates the true gap (it grows with K).
    - ``drift/grad_cosine``: cos(grad of the objective's PG loss at rho = 1 with its own kind of draws,
      grad of -mean(A * loglik)), over ``params``. The DiPOD and reference terms are not included.

    Args:
        prompt_ids: (B, P). completion_ids: (B, L). valid: (B, L) bool. adv: (B,).
        objective_params: the objective's settings. draws: fresh masks of the objective's kind (``draw_noise``).
    """
    params = [p for p in params if p.requires_grad]
    objective = get_objective("language", objective_params.name)
    score = dict(mask_id=mask_id, attention_mask=attention_mask)
    with torch.enable_grad():
        token_logp = masked_token_logprobs(logits_fn, prompt_ids, completion_ids, draws, **score)  # (B, K, L)
        new = MaskedScores(token_logp, draws, valid)
        old = MaskedScores(token_logp.detach(), draws, valid)
        pg_loss = objective.fn(new, old, adv, objective_params).loss
        order_loglik, exact = language_order_logliks(
            logits_fn, prompt_ids, completion_ids, valid, mask_id=mask_id, num_orders=num_orders,
            generator=generator, attention_mask=attention_mask,
        )  # fmt: skip
        loglik = order_iw_loglik(order_loglik)  # (B,)
        cos = grad_cosine(pg_loss, true_pg_loss(loglik, adv), params)
    # The ELBO as the mean over the same orders: unbiased for the count-scheme ELBO, and the gap
    # logmeanexp - mean >= 0 on every sample, with far less variance than a separate MC estimate.
    order_loglik, loglik = order_loglik.detach(), loglik.detach()
    elbo = order_elbo(order_loglik)
    extra = {}
    if objective.draws == "elbo":  # the method's own K-draw estimate comes for free
        extra["drift/elbo_mc"] = float(elbo_from_logprobs(token_logp.detach(), draws, valid, scale="sum").mean())
    return {
        "drift/elbo": float(elbo.mean()),
        "drift/loglik": float(loglik.mean()),
        "drift/gap": float(gap(loglik, elbo).mean()),
        "drift/grad_cosine": cos,
        "drift/num_orders": float(order_loglik.shape[1]),
        "drift/exact": float(exact),
        **extra,
    }
