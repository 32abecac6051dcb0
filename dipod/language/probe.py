"""The language drift probe: a masked diffusion LM's ELBO, its log-likelihood over unmasking orders, their
gap, and the cosine between the objective's proxy gradient and the true policy gradient.

The probe batch comes from the trainer's own rollout code and its draws from the one draw dispatch
(``dipod.language.draws``), so the probe measures exactly what training optimises.

Shape legend: B probe batch, K masking draws or orders, P prompt length, L completion length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from dipod.bounds.masked import (
    LogitsAt,
    LogitsFn,
    MaskDraws,
    OrderStates,
    all_orders,
    any_order_loglik,
    elbo_from_logprobs,
    masked_token_logprobs,
    order_elbo,
    order_iw_loglik,
    order_logliks_of_states,
    order_state_logprobs,
    order_states,
    random_orders,
    state_chunks,
)
from dipod.diagnostics.drift import cosine, flat_grad, gap
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


def probe_orders(valid: torch.Tensor, num_orders: int, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
    """(B, K, L) unmasking orders, valid positions first: every order when L! <= ``num_orders`` (exact), else K
    random ones. Returns (orders, exact)."""
    # Positions past the last valid one are never masked nor predicted, so only the first `span`
    # positions need enumerating (they stay in the input as context either way).
    span = int(valid.any(0).nonzero().max()) + 1 if bool(valid.any()) else 1
    exact = math.factorial(span) <= num_orders
    return (_exact_orders(valid, span) if exact else random_orders(valid, num_orders, generator=generator)), exact


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
    max_rows: int = 4096,
) -> tuple[torch.Tensor, bool]:
    """(B, K) any-order AR log-likelihoods: every order when L! <= ``num_orders`` (exact), else K random ones.

    Returns (order log-likelihoods, exact). ``order_iw_loglik`` of them is log pi (exact) or the
    K-order importance-weighted bound; their mean is the ELBO (exact, or unbiased).
    """
    orders, exact = probe_orders(valid, num_orders, generator)
    order_loglik = any_order_loglik(
        logits_fn, prompt_ids, completion_ids, valid, orders, mask_id=mask_id, attention_mask=attention_mask,
        max_rows=max_rows,
    )  # fmt: skip
    return order_loglik, exact


def order_loglik_grad(
    logits_fn: LogitsFn,
    params: Sequence[torch.Tensor],
    states: OrderStates,
    coef: torch.Tensor,
    *,
    max_rows: int,
    logits_at: LogitsAt = "all",
) -> torch.Tensor:
    """Flat gradient of sum_{b,k} coef[b, k] * order_loglik[b, k] over ``params``, one chunk of at most
    ``max_rows`` decoding states alive at a time.

    The functional is linear in the states' log-probs, so each chunk's gradient is computed and summed on its
    own: the memory of one chunk's graph instead of all B * K * L states' (which at 1B parameters and 64-token
    completions is more than a GPU holds).

    Args:
        coef: (B, K) weights, no gradient.
    """
    per_state = coef.detach()[:, :, None].expand(states.shape).reshape(-1)  # (S,)
    total = None
    for rows in state_chunks(states, max_rows):
        with torch.enable_grad():
            logp = order_state_logprobs(logits_fn, states, rows, logits_at=logits_at)  # (s,)
            part = flat_grad((per_state[rows] * logp).sum(), params)
        total = part if total is None else total + part
    return total


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
    max_rows: int = 256,
    logits_at: LogitsAt = "all",
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
        max_rows: decoding states per forward pass (``drift.chunk_rows``): the log-likelihood's gradient is
            accumulated chunk by chunk, so the probe's memory is one chunk's graph, whatever B * K * L is.
        logits_at: ``"masked"`` computes each decoding state's logits at its predicted position alone (a model
            taking ``positions``, as ``language.score_logits``); ``"all"`` works with any ``LogitsFn``.
    """
    params = [p for p in params if p.requires_grad]
    objective = get_objective("language", objective_params.name)
    score = dict(mask_id=mask_id, attention_mask=attention_mask)
    with torch.enable_grad():
        token_logp = masked_token_logprobs(
            logits_fn, prompt_ids, completion_ids, draws, logits_at=logits_at, valid=valid, **score
        )  # (B, K, L), as training scores it
        new = MaskedScores(token_logp, draws, valid)
        old = MaskedScores(token_logp.detach(), draws, valid)
        proxy_grad = flat_grad(objective.fn(new, old, adv, objective_params).loss, params)
    token_logp = token_logp.detach()
    orders, exact = probe_orders(valid, num_orders, generator)
    states = order_states(prompt_ids, completion_ids, valid, orders, **score)
    with torch.no_grad():
        order_loglik = order_logliks_of_states(logits_fn, states, max_rows, logits_at=logits_at)  # (B, K)
    loglik = order_iw_loglik(order_loglik)  # (B,)
    # The true PG loss -mean_b A_b * logmeanexp_k(order_loglik) has the gradient of sum_{b,k} coef * order_loglik
    # with coef = -A_b / B * softmax_k(order_loglik_b): a second, chunked pass with graphs gives it.
    coef = -adv.to(order_loglik.dtype)[:, None] / adv.shape[0] * order_loglik.softmax(-1)  # (B, K)
    true_grad = order_loglik_grad(logits_fn, params, states, coef, max_rows=max_rows, logits_at=logits_at)
    cos = cosine(proxy_grad, true_grad)
    # The ELBO as the mean over the same orders: unbiased for the count-scheme ELBO, and the gap
    # logmeanexp - mean >= 0 on every sample, with far less variance than a separate MC estimate.
    elbo = order_elbo(order_loglik)
    extra = {}
    if objective.draws == "elbo":  # the method's own K-draw estimate comes for free
        extra["drift/elbo_mc"] = float(elbo_from_logprobs(token_logp, draws, valid, scale="sum").mean())
    return {
        "drift/elbo": float(elbo.mean()),
        "drift/loglik": float(loglik.mean()),
        "drift/gap": float(gap(loglik, elbo).mean()),
        "drift/grad_cosine": cos,
        "drift/num_orders": float(order_loglik.shape[1]),
        "drift/exact": float(exact),
        **extra,
    }
