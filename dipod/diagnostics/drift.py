"""Double drift, measured: the gap log pi - ELBO and the cosine between proxy and true policy gradients.

A policy-gradient method for a diffusion policy follows the gradient of a bound (the ELBO, an EUBO,
a one-step proxy) instead of log pi. Two numbers show when that stops being safe (DESIGN §1):

- ``drift/gap`` = log pi - ELBO on fresh samples: zero when the bound is tight, growing as
  reward-seeking updates loosen it.
- ``drift/grad_cosine``: cosine between the gradient of the method's PG loss (at rho = 1) and the
  gradient of the true-likelihood PG loss -mean(A * log pi) on the same batch. Near 1 while the bound
  is tight; lower once A * grad(gap) leaks into the proxy.

The functions here are pure (tensors and callables in, numbers out) and never touch ``.grad`` or
optimiser state, so a trainer can call them between updates without changing its trajectory.
Randomness comes from the caller's generator; a trainer should keep a separate one for the probe so
that training draws do not depend on whether the monitor runs.

Shape legend: B probe batch, K masking draws or orders, P prompt length, L completion length,
S observation dim, A action dim, N flow draws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from dipod.bounds.flow import FlowDraws, VelocityFn, cfm_elbo, cfm_loss, euler_loglik
from dipod.bounds.masked import (
    LogitsFn,
    MaskDraws,
    all_orders,
    any_order_loglik,
    draw_block_random_masks,
    draw_masks,
    elbo_from_logprobs,
    masked_token_logprobs,
    order_elbo,
    order_iw_loglik,
    random_orders,
)
from dipod.objectives import MaskedScores, get_objective

DEFAULT_EVERY = 100
"""Probe interval (policy-improvement steps) at which the monitor costs <= ~10% of training.

With the config defaults (probe_size 16, num_orders 16) a language probe runs B * K * L any-order
states forward and backward: about 4-8 training steps' worth on the shipped tiny Sudoku trainer and
7-10 on bench_drift_monitor's synthetic set-up (it reports ``probe_over_step``). Shorter runs that
want denser curves set ``drift.every`` lower and pay proportionally, or shrink ``probe_size`` /
``num_orders``."""


def gap(loglik: torch.Tensor, elbo: torch.Tensor) -> torch.Tensor:
    """(B,) variational gap log pi - ELBO (>= 0 up to estimator noise)."""
    return loglik - elbo


def true_pg_loss(loglik: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """-mean(A * log pi): the REINFORCE loss whose gradient is the true policy gradient on the batch."""
    return -(adv.to(loglik.dtype) * loglik).mean()


def flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool = False) -> torch.Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` as one flat vector; parameters the loss does not reach give zeros.

    Uses ``torch.autograd.grad``, so ``.grad`` fields are left as they were.
    """
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat vectors (in float64); NaN when either is exactly zero (undefined).

    A zero gradient happens when every advantage in the batch is zero; tiny but non-zero gradients (a
    nearly deterministic policy) still have a well-defined direction, so there is no magnitude cut-off.
    """
    a64, b64 = a.double(), b.double()
    denom = a64.norm() * b64.norm()
    return float((a64 @ b64) / denom) if float(denom) > 0 else math.nan


def grad_cosine(loss_a: torch.Tensor, loss_b: torch.Tensor, params: Iterable[torch.Tensor]) -> float:
    """Cosine between the gradients of two scalar losses over the same parameter list.

    The graphs may share nodes (one forward pass feeding both losses): the first backward keeps it.
    """
    params = [p for p in params if p.requires_grad]
    grad_a = flat_grad(loss_a, params, retain_graph=True)
    grad_b = flat_grad(loss_b, params)
    return cosine(grad_a, grad_b)


# --------------------------------------------------------------------------- language


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


def probe_draws(
    draws_kind: str,
    valid: torch.Tensor,
    num_draws: int,
    *,
    generator: torch.Generator,
    block_length: int | None = None,
    prompt_valid: torch.Tensor | None = None,
    prompt_mask_prob: float = 0.0,
) -> MaskDraws:
    """The masking draws an objective uses (``Objective.draws``), drawn fresh for the probe batch.

    ``prompt_mask_prob`` > 0 masks prompt tokens at random as SPG and diffu-GRPO do in training
    (needs ``prompt_valid`` (B, P)); the count-scheme ELBO never masks the prompt.
    """
    if draws_kind == "elbo":
        return draw_masks(valid, num_draws, generator=generator, scheme="count")
    if draws_kind == "block_random":
        return draw_block_random_masks(
            valid, num_draws, generator=generator, block_length=block_length or valid.shape[1],
            prompt_valid=prompt_valid, prompt_mask_prob=prompt_mask_prob,
        )  # fmt: skip
    if draws_kind == "one_step":
        # The whole completion masked (weight 1), K copies that differ only in their prompt masks.
        mask = torch.ones_like(valid)[:, None, :].expand(-1, num_draws, -1).contiguous()  # (B, K, L)
        ones = torch.ones(valid.shape[0], num_draws, device=valid.device)
        prompt_mask = None
        if prompt_mask_prob > 0:
            if prompt_valid is None:
                raise ValueError("prompt_mask_prob > 0 needs prompt_valid (B, P)")
            u = torch.rand(*mask.shape[:2], prompt_valid.shape[-1], generator=generator, device=valid.device)
            prompt_mask = (u < prompt_mask_prob) & prompt_valid[:, None, :]  # (B, K, P)
        return MaskDraws(mask=mask, weight=ones, t=ones, prompt_mask=prompt_mask)
    raise ValueError(f"no language probe draws for {draws_kind!r}")


def language_drift_probe(
    logits_fn: LogitsFn,
    params: Iterable[torch.Tensor],
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    adv: torch.Tensor,
    objective_cfg: Any,
    *,
    mask_id: int,
    num_draws: int,
    num_orders: int,
    generator: torch.Generator,
    attention_mask: torch.Tensor | None = None,
    block_length: int | None = None,
    prompt_mask_prob: float = 0.0,
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
        objective_cfg: ``ObjectiveConfig`` (name, elbo_scale, clips, SPG settings).
    """
    params = [p for p in params if p.requires_grad]
    objective = get_objective("language", objective_cfg.name)
    score = dict(mask_id=mask_id, attention_mask=attention_mask)
    with torch.enable_grad():
        prompt_valid = None if attention_mask is None else attention_mask[:, : prompt_ids.shape[1]]
        if prompt_valid is None and prompt_mask_prob > 0:
            prompt_valid = torch.ones_like(prompt_ids, dtype=torch.bool)
        draws = probe_draws(
            objective.draws, valid, num_draws, generator=generator, block_length=block_length,
            prompt_valid=prompt_valid, prompt_mask_prob=prompt_mask_prob,
        )  # fmt: skip
        token_logp = masked_token_logprobs(logits_fn, prompt_ids, completion_ids, draws, **score)  # (B, K, L)
        new = MaskedScores(token_logp, draws, valid)
        old = MaskedScores(token_logp.detach(), draws, valid)
        pg_loss = objective.fn(new, old, adv, objective_cfg).loss
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


def language_trainer_drift_probe(trainer: Any, generator: torch.Generator, np_rng: Any) -> dict[str, float]:
    """``language_drift_probe`` on fresh completions of a ``LanguageTrainer``'s current policy.

    Samples ``ceil(drift.probe_size / G)`` prompts with ``np_rng`` and G completions each with the
    trainer's sampler and ``generator``, scores them with the task's reward, and takes group
    advantages, exactly as a rollout does, but from the probe's own random streams, so the
    training trajectory is the same whether or not the monitor runs. The trainer should own both
    streams and keep them in its ``state_dict`` (bit-for-bit resume).
    """
    from dipod.advantages import group_advantages
    from dipod.language.rollout import decode_and_score, encode_prompts

    cfg, lang = trainer.cfg, trainer.cfg.language
    group, fmt = lang.group_size, lang.data.prompt_format
    examples = trainer.source.draw(math.ceil(cfg.drift.probe_size / group), np_rng)
    rows = [ex for ex in examples for _ in range(group)]  # G contiguous copies per prompt
    prompt_ids, prompt_attn = encode_prompts(
        trainer.tokenizer, [trainer.task.prompt(ex, fmt) for ex in rows], trainer.device, chat=lang.data.chat_template
    )
    out = decode_and_score(
        trainer.model, trainer.tokenizer, trainer.task, rows, prompt_ids, prompt_attn, lang.sampler, fmt, generator,
        score_eos=lang.score_eos,
    )  # fmt: skip
    rewards = torch.as_tensor(out.rewards, dtype=torch.float32, device=trainer.device)
    attention = torch.cat([prompt_attn, torch.ones_like(out.valid)], dim=1)  # (B, P + L)
    metrics = language_drift_probe(
        trainer.model,
        trainer.params,
        prompt_ids,
        out.completion_ids,
        out.valid,
        group_advantages(rewards, group, normalize_std=lang.normalize_advantages),  # as the trainer's
        cfg.objective,
        mask_id=trainer.tokenizer.mask_token_id,
        num_draws=lang.elbo_draws,
        num_orders=cfg.drift.num_orders,
        generator=generator,
        attention_mask=attention,
        block_length=lang.spg_block_length,
        prompt_mask_prob=lang.prompt_mask_prob,
    )
    metrics["drift/reward_mean"] = float(rewards.mean())
    return metrics


# --------------------------------------------------------------------------- control


def control_drift_probe(
    velocity_fn: VelocityFn,
    params: Iterable[torch.Tensor],
    obs: torch.Tensor,
    actions_scaled: torch.Tensor,
    adv: torch.Tensor,
    draws: FlowDraws,
    objective_cfg: Any,
    *,
    sampling_steps: int,
) -> dict[str, float]:
    """Drift metrics of a flow policy on a probe batch of (obs, action, advantage).

    ``drift/elbo`` is the CFM surrogate -mean_N l_i, which equals the flow ELBO only up to a positive
    weight and a constant, so ``drift/gap`` against the exact Euler log-likelihood is meaningful as a
    trend (its change over training), not as an absolute number. ``drift/grad_cosine`` compares the
    objective's PG loss at rho = 1 with -mean(A * log pi), log pi exact (``euler_loglik``).

    Args:
        obs: (B, S). actions_scaled: (B, A). adv: (B,). draws: N (tau, eps) pairs per sample.
    """
    params = [p for p in params if p.requires_grad]
    objective = get_objective("control", objective_cfg.name)
    with torch.enable_grad():
        cfm = cfm_loss(velocity_fn, obs, actions_scaled, draws)  # (B, N)
        pg_loss = objective.fn(cfm, cfm.detach(), adv, objective_cfg).loss
        loglik = euler_loglik(velocity_fn, obs, actions_scaled, sampling_steps)  # (B,)
        cos = grad_cosine(pg_loss, true_pg_loss(loglik, adv), params)
    elbo = cfm_elbo(cfm.detach())
    loglik = loglik.detach()
    return {
        "drift/elbo": float(elbo.mean()),
        "drift/loglik": float(loglik.mean()),
        "drift/gap": float(gap(loglik, elbo).mean()),
        "drift/grad_cosine": cos,
    }


# --------------------------------------------------------------------------- scheduling


class DriftMonitor:
    """Runs a probe every ``every`` steps and keeps the time it took, so its cost can be reported.

    ``probe`` is any zero-argument callable returning drift metrics (e.g. ``trainer.drift_probe``).
    ``every = 0`` disables it.
    """

    def __init__(self, probe: Callable[[], dict[str, float]], every: int = DEFAULT_EVERY) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.probe = probe
        self.every = every
        self.seconds = 0.0
        """Wall time spent inside the probe so far."""
        self.calls = 0

    def due(self, step: int) -> bool:
        """Whether the probe runs after completed step ``step`` (1-based)."""
        return self.every > 0 and step > 0 and step % self.every == 0

    def maybe_probe(self, step: int) -> dict[str, float]:
        """The probe's metrics (plus ``drift/seconds``) when due, else an empty dict."""
        if not self.due(step):
            return {}
        start = time.perf_counter()
        metrics = dict(self.probe())
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.calls += 1
        metrics["drift/seconds"] = elapsed
        return metrics
