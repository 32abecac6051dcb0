"""The control drift probe: a flow policy's ELBO surrogate, its exact Euler log-likelihood, their gap, and
the cosine between the objective's proxy gradient and the true policy gradient.

Shape legend: B probe batch, S observation dim, A action dim, N flow draws.
"""

from __future__ import annotations

import torch

from dipod.bounds.flow import FlowDraws, cfm_elbo, cfm_loss, euler_loglik
from dipod.control.policy import FlowPolicy
from dipod.diagnostics.drift import gap, grad_cosine, true_pg_loss
from dipod.objectives import ObjectiveParams, get_objective


def flow_drift_metrics(
    actor: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, draws: FlowDraws,
    params: ObjectiveParams,
) -> dict[str, float]:  # fmt: skip
    """Drift metrics of a flow policy on a probe batch of (obs, env-unit action, advantage).

    ``drift/elbo`` is the CFM surrogate -mean_N l_i in the flow's scaled action units, which equals the
    flow ELBO only up to a positive weight and a constant, so ``drift/gap`` against the exact Euler
    log-likelihood is meaningful as a trend (its change over training), not as an absolute number.
    ``drift/grad_cosine`` compares the objective's PG loss at rho = 1 with -mean(A * log pi), log pi exact.

    Args:
        obs: (B, S). actions: (B, A) env units. adv: (B,). draws: N (tau, eps) pairs per sample.
    """
    parameters = [p for p in actor.parameters() if p.requires_grad]
    objective = get_objective("control", params.name)
    scaled = actions / actor.actor_scale  # (B, A)
    with torch.enable_grad():
        cfm = cfm_loss(actor.velocity, obs, scaled, draws)  # (B, N)
        pg_loss = objective.fn(cfm, cfm.detach(), adv, params).loss
        loglik = euler_loglik(actor.velocity, obs, scaled, actor.sampling_steps)  # (B,)
        cos = grad_cosine(pg_loss, true_pg_loss(loglik, adv), parameters)
    elbo = cfm_elbo(cfm.detach())
    loglik = loglik.detach()
    return {
        "drift/elbo": float(elbo.mean()),
        "drift/loglik": float(loglik.mean()),
        "drift/gap": float(gap(loglik, elbo).mean()),
        "drift/grad_cosine": cos,
    }


def control_drift_probe(
    actor: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, params: ObjectiveParams,
    num_draws: int, generator: torch.Generator,
) -> dict[str, float]:  # fmt: skip
    """``flow_drift_metrics`` with fresh (tau, eps) draws from the policy's own noise draw (``draw_noise``),
    the same the trainer stores for its updates, taken from the probe's generator."""
    noise = actor.draw_noise(obs.shape[0], num_draws, generator)
    return flow_drift_metrics(actor, obs, actions, adv, FlowDraws(noise["tau"], noise["eps"]), params)
