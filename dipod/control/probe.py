"""The control drift probe: a flow policy's ELBO surrogate, its exact Euler log-likelihood, their gap, and
the cosine between the objective's proxy gradient and the true policy gradient.

Shape legend: B probe batch, S observation dim, A action dim, N flow draws.
"""

from __future__ import annotations

import torch

from dipod.bounds.flow import ELBO_TAU_MIN, FlowDraws, cfm_elbo, cfm_loss, draw_elbo_noise, euler_loglik, flow_elbo
from dipod.control.policy import FlowPolicy
from dipod.diagnostics.drift import gap, grad_cosine, true_pg_loss
from dipod.objectives import ObjectiveParams, get_objective


def flow_drift_metrics(
    actor: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, draws: FlowDraws,
    params: ObjectiveParams, elbo_draws: FlowDraws | None = None,
) -> dict[str, float]:  # fmt: skip
    """Drift metrics of a flow policy on a probe batch of (obs, env-unit action, advantage), in the flow's
    scaled action units.

    - ``drift/elbo``: the weighted flow ELBO (``flow_elbo``: the Gaussian-path bound with its per-tau weight
      and constants) on ``elbo_draws``, so ``drift/gap`` = exact Euler log-likelihood - ELBO has a level in
      nats. The bound is on the stochastic sampler the flow defines, not on the Euler ODE sampler, so single
      samples can read negative; the batch mean is the figure to read.
    - ``drift/cfm_surrogate`` and ``drift/cfm_gap``: the objectives' surrogate -mean_N l_i, the ELBO only up
      to weight and constant (meaningful as a trend), and log-likelihood minus it.
    - ``drift/grad_cosine``: the objective's PG loss at rho = 1 against -mean(A * log pi), log pi exact.
    - ``drift/invertible_frac``: the share of rows whose Euler step map could be inverted; the others have no
      exact log-likelihood here and are left out of every figure (so with it below 1 the figures describe the
      invertible rows only).

    Args:
        obs: (B, S). actions: (B, A) env units. adv: (B,). draws: N (tau, eps) pairs per sample (the
        objective's); elbo_draws: (tau, eps) from ``draw_elbo_noise`` (None: no weighted ELBO).
    """
    parameters = [p for p in actor.parameters() if p.requires_grad]
    objective = get_objective("control", params.name)
    scaled = actions / actor.actor_scale  # (B, A)
    with torch.enable_grad():
        loglik = euler_loglik(actor.velocity, obs, scaled, actor.sampling_steps, on_fail="nan")  # (B,)
    rows = loglik.isfinite()  # (B,) the rows whose exact log-likelihood exists
    invertible = {"drift/invertible_frac": float(rows.float().mean())}
    if not rows.any():
        return invertible
    if not rows.all():  # NaN rows carry no gradient: score the invertible ones again, on their own
        obs, scaled, adv, draws = obs[rows], scaled[rows], adv[rows], draws[rows]
        elbo_draws = elbo_draws[rows] if elbo_draws is not None else None
        with torch.enable_grad():
            loglik = euler_loglik(actor.velocity, obs, scaled, actor.sampling_steps)
    with torch.enable_grad():
        cfm = cfm_loss(actor.velocity, obs, scaled, draws)  # (B, N)
        pg_loss = objective.fn(cfm, cfm.detach(), adv, params).loss
        cos = grad_cosine(pg_loss, true_pg_loss(loglik, adv), parameters)
    surrogate = cfm_elbo(cfm.detach())  # (B,)
    loglik = loglik.detach()
    metrics = {
        **invertible,
        "drift/loglik": float(loglik.mean()),
        "drift/cfm_surrogate": float(surrogate.mean()),
        "drift/cfm_gap": float(gap(loglik, surrogate).mean()),
        "drift/grad_cosine": cos,
    }
    if elbo_draws is not None:
        with torch.no_grad():
            weighted = flow_elbo(
                cfm_loss(actor.velocity, obs, scaled, elbo_draws), elbo_draws.tau, scaled,
                tau_min=ELBO_TAU_MIN, tau_max=1.0,
            )  # fmt: skip  # (B,)
        metrics.update({"drift/elbo": float(weighted.mean()), "drift/gap": float(gap(loglik, weighted).mean())})
    return metrics


def bound_gap(
    actor: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, num_draws: int, generator: torch.Generator
) -> dict[str, float]:
    """Mean exact Euler log-likelihood, weighted flow ELBO and their gap (nats) of env-unit ``actions`` (B, A)
    given ``obs`` (B, S): how loose the bound is on these samples, with no gradient. Means over the rows whose
    Euler step maps invert (``invertible_frac`` of them)."""
    scaled = actions / actor.actor_scale  # (B, A)
    draws = draw_elbo_noise(obs.shape[0], num_draws, actor.action_dim, generator=generator, device=generator.device)
    draws = draws.to(obs.device)
    with torch.no_grad():
        loglik = euler_loglik(actor.velocity, obs, scaled, actor.sampling_steps, on_fail="nan")  # (B,)
        elbo = flow_elbo(cfm_loss(actor.velocity, obs, scaled, draws), draws.tau, scaled,
                         tau_min=ELBO_TAU_MIN, tau_max=1.0)  # fmt: skip  # (B,)
    rows = loglik.isfinite()  # rows whose step maps do not invert have no exact log-likelihood
    loglik, elbo = loglik[rows], elbo[rows]
    return {"loglik": float(loglik.mean()), "elbo": float(elbo.mean()), "gap": float(gap(loglik, elbo).mean()),
            "invertible_frac": float(rows.float().mean())}  # fmt: skip


def control_drift_probe(
    actor: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, params: ObjectiveParams,
    num_draws: int, generator: torch.Generator,
) -> dict[str, float]:  # fmt: skip
    """``flow_drift_metrics`` with fresh (tau, eps) draws from the policy's own noise draw (``draw_noise``), the
    same the trainer stores for its updates, and the weighted ELBO's draws, both from the probe's generator."""
    noise = actor.draw_noise(obs.shape[0], num_draws, generator)
    elbo_draws = draw_elbo_noise(
        obs.shape[0], max(num_draws, 8), actor.action_dim, generator=generator, device=generator.device
    )
    return flow_drift_metrics(actor, obs, actions, adv, FlowDraws(noise["tau"], noise["eps"]), params, elbo_draws)
