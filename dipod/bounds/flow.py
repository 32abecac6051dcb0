"""Likelihood surrogates and exact likelihoods for flow (diffusion) policies in continuous control.

Convention (FPO++): x_tau = tau * eps + (1 - tau) * a, so tau = 1 is pure noise and the velocity
target is eps - a. The sampler integrates dx/dtau = v(x, tau, s) from tau = 1 down to 0 with Euler
steps x <- x - dt * v(x, tau_k, s), tau_k = 1 - k / N.

- ``cfm_loss``: the per-draw conditional flow-matching loss; -CFM is, up to weights and constants,
  the flow ELBO, so exp(l_old - l_new) is an ELBO ratio (FPO).
- ``flow_elbo``: the properly weighted ELBO (weight (1 - tau) / tau per unit of squared velocity error,
  plus the decoder and prior terms), a bound with a level, from the same per-draw CFM losses.
- ``euler_loglik``: exact log-likelihood of the N-step Euler sampler by change of variables,
  log N(z) - sum_k log |det(I - dt * dv/dx)| along the inverted path.
- ``ode_loglik``: the continuous-time flow's log-likelihood, log N(x_1) + int_0^1 div v dtau.

Shape legend: B batch, N Monte-Carlo (tau, eps) draws, A action dim, S observation dim.
Velocity functions map (x (M, A), tau (M,), obs (M, S)) -> (M, A).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import jacrev, vmap

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FlowDraws:
    """N (tau, eps) draws per sample, stored with the rollout and reused in every update epoch."""

    tau: torch.Tensor
    """(B, N) noise levels in [tau_min, tau_max]."""
    eps: torch.Tensor
    """(B, N, A) standard Gaussian noise."""

    @property
    def num_draws(self) -> int:
        return self.tau.shape[1]

    def __getitem__(self, rows: torch.Tensor | slice) -> FlowDraws:
        return FlowDraws(self.tau[rows], self.eps[rows])

    def to(self, device: torch.device | str) -> FlowDraws:
        return FlowDraws(self.tau.to(device), self.eps.to(device))


def draw_flow_noise(
    batch: int,
    num_draws: int,
    action_dim: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    beta_t: float = 1.0,
    tau_min: float = 0.005,
    tau_max: float = 0.995,
) -> FlowDraws:
    """Draw (tau, eps) pairs with FPO++'s schedule tau = tau_min + (tau_max - tau_min)(1 - (1 - u)^(1/beta_t)).

    beta_t = 1 gives tau uniform on [tau_min, tau_max]; the margins keep the loss away from the
    singular ends.
    """
    u = torch.rand(batch, num_draws, generator=generator, device=device)
    tau = tau_min + (tau_max - tau_min) * (1.0 - (1.0 - u) ** (1.0 / beta_t))
    eps = torch.randn(batch, num_draws, action_dim, generator=generator, device=device)
    return FlowDraws(tau=tau, eps=eps)


def cfm_loss(velocity_fn: VelocityFn, obs: torch.Tensor, actions: torch.Tensor, draws: FlowDraws) -> torch.Tensor:
    """(B, N) conditional flow-matching loss of each draw, all draws in one forward pass.

    l_i = mean_A (v(x_tau_i, tau_i, s) - (eps_i - a))^2 with x_tau = tau * eps + (1 - tau) * a.

    Args:
        obs: (B, S). actions: (B, A), already divided by the policy's action scale.
    """
    batch, num_draws, action_dim = draws.eps.shape
    tau = draws.tau[..., None]  # (B, N, 1)
    a = actions[:, None, :]  # (B, 1, A)
    x_tau = tau * draws.eps + (1.0 - tau) * a  # (B, N, A)
    target = draws.eps - a  # (B, N, A)
    obs_rep = obs[:, None, :].expand(batch, num_draws, obs.shape[-1]).reshape(batch * num_draws, -1)
    pred = velocity_fn(x_tau.reshape(-1, action_dim), draws.tau.reshape(-1), obs_rep).view(batch, num_draws, action_dim)
    return (pred - target).pow(2).mean(-1)


def cfm_elbo(cfm_losses: torch.Tensor) -> torch.Tensor:
    """(B,) flow ELBO surrogate -mean_N l_i: equal to the ELBO up to a positive weight and a constant."""
    return -cfm_losses.mean(-1)


ELBO_TAU_MIN = 1e-3
"""Default lower end of the ELBO's tau range: the decoder's noise level (bias O(tau_min^2) for a smooth flow)."""


def draw_elbo_noise(
    batch: int,
    num_draws: int,
    action_dim: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    tau_min: float = ELBO_TAU_MIN,
    tau_max: float = 1.0,
) -> FlowDraws:
    """(tau, eps) draws for ``flow_elbo`` with ``tau_density="log_uniform"``: tau log-uniform, stratified.

    The ELBO weight (1 - tau) / tau makes uniform tau a high-variance estimator near tau_min; sampling
    log tau uniformly on [log tau_min, log tau_max] cancels the 1 / tau. Each row's N draws are stratified
    (one per 1/N-quantile of log tau), as LLaDA stratifies mask ratios, which lowers the variance further
    and keeps the estimate unbiased.
    """
    if not 0.0 < tau_min < tau_max <= 1.0:
        raise ValueError(f"need 0 < tau_min < tau_max <= 1, got tau_min={tau_min}, tau_max={tau_max}")
    strata = torch.arange(num_draws, device=device, dtype=torch.float32)  # (N,)
    u = (strata + torch.rand(batch, num_draws, generator=generator, device=device)) / num_draws  # (B, N)
    log_min, log_max = math.log(tau_min), math.log(tau_max)
    tau = torch.exp(log_min + (log_max - log_min) * u).clamp(tau_min, tau_max)
    eps = torch.randn(batch, num_draws, action_dim, generator=generator, device=device)
    return FlowDraws(tau=tau, eps=eps)


def flow_elbo(
    cfm_losses: torch.Tensor,
    tau: torch.Tensor,
    actions: torch.Tensor,
    *,
    tau_min: float,
    tau_max: float,
    tau_density: str = "log_uniform",
) -> torch.Tensor:
    """(B,) the flow's evidence lower bound, in nats, from per-draw CFM losses: a level, not only a trend.

    Derivation. The interpolation x_tau = tau * eps + (1 - tau) * a is the Gaussian diffusion
    q(x_tau | a) = N((1 - tau) a, tau^2 I), with signal-to-noise ratio SNR(tau) = (1 - tau)^2 / tau^2.
    A velocity v(x, tau) defines a denoiser a_hat = x - tau * v (because a = x_tau - tau (eps - a)), hence
    a score and a reverse-time SDE (drift 2 v + x / (1 - tau), noise g^2 = 2 tau / (1 - tau)) whose
    probability-flow ODE is exactly dx/dtau = v, the flow the sampler integrates. Seen as this diffusion,
    the continuous-time variational bound (Kingma et al. 2021, "Variational Diffusion Models", eq. 17:
    -1/2 int SNR'(tau) ||a - a_hat||^2 dtau) reads, with SNR' = -2 (1 - tau) / tau^3 and
    ||a - a_hat||^2 = tau^2 ||v - (eps - a)||^2,

        ELBO(a) = E_eps log p(a | x_tau_min) - KL(q(x_tau_max | a) || N(0, I))
                  - int_{tau_min}^{tau_max} (1 - tau) / tau * E_eps ||v(x_tau, tau) - (eps - a)||^2 dtau,

    the squared error summed over the A action dimensions (``cfm_losses`` are means over A, so times A).
    Decoder p(a | x) = N(x / (1 - tau_min), (tau_min / (1 - tau_min))^2 I), whose expected log density
    under q is the constant -A/2 log(2 pi) - A log(tau_min / (1 - tau_min)) - A/2. Prior N(0, I) at
    tau_max (the sampler's start), KL = 1/2 sum_A [tau_max^2 + (1 - tau_max)^2 a^2 - 1 - 2 log tau_max],
    zero at tau_max = 1. The integral is estimated from the draws by importance weighting with their
    density p(tau): 1 / (tau log(tau_max / tau_min)) for ``draw_elbo_noise`` ("log_uniform"),
    1 / (tau_max - tau_min) for ``draw_flow_noise`` with beta_t = 1 ("uniform", which reuses a
    rollout's stored draws but has a larger variance).

    What it bounds. ELBO <= log p_SDE(a), the likelihood of the stochastic sampler above, for any v.
    When v is the exact marginal velocity of its own path (a perfectly self-consistent flow), the SDE and
    the ODE sampler have the same marginals and ELBO -> log pi_ODE(a) for every a as tau_min -> 0,
    tau_max = 1 (error O(tau_min^2)). For an inconsistent v the ODE likelihood is a different model's,
    so exact log-likelihood - ELBO measures how far the flow is from being its own diffusion; it is not
    guaranteed non-negative. The uniform-weight CFM surrogate ``cfm_elbo`` differs from this by the
    per-tau weight (1 - tau) / tau * A * (tau_max - tau_min) and the constants.

    Args:
        cfm_losses: (B, N) per-draw losses from ``cfm_loss`` (mean over A). tau: (B, N) their noise levels,
            inside [tau_min, tau_max]. actions: (B, A) in the flow's (scaled) units.
        tau_density: how ``tau`` was drawn, "log_uniform" (``draw_elbo_noise``) or "uniform".
    """
    if not 0.0 < tau_min < tau_max <= 1.0:
        raise ValueError(f"need 0 < tau_min < tau_max <= 1, got tau_min={tau_min}, tau_max={tau_max}")
    action_dim = actions.shape[-1]
    if tau_density == "log_uniform":
        inv_density = tau * math.log(tau_max / tau_min)  # (B, N) 1 / p(tau)
    elif tau_density == "uniform":
        inv_density = torch.full_like(tau, tau_max - tau_min)
    else:
        raise ValueError(f"unknown tau_density {tau_density!r}; expected 'log_uniform' or 'uniform'")
    sq_err = action_dim * cfm_losses  # (B, N) squared velocity error summed over A
    diffusion = ((1.0 - tau) / tau * sq_err * inv_density).mean(-1)  # (B,)
    decoder = -0.5 * action_dim * (math.log(2 * math.pi) + 1.0) - action_dim * math.log(tau_min / (1.0 - tau_min))
    prior_kl = 0.5 * (
        action_dim * (tau_max**2 - 1.0 - 2.0 * math.log(tau_max)) + (1.0 - tau_max) ** 2 * actions.pow(2).sum(-1)
    )  # (B,)
    return decoder - prior_kl - diffusion


def euler_times(num_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) the sampler's noise levels tau_k = 1 - k / N, k = 0..N-1."""
    return 1.0 - torch.arange(num_steps, device=device, dtype=torch.float32) / num_steps


def euler_sample(velocity_fn: VelocityFn, obs: torch.Tensor, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(B, A) actions (in scaled units) from N Euler steps starting at the Gaussian sample ``noise`` (B, A)."""
    dt = 1.0 / num_steps
    x = noise
    for tau in euler_times(num_steps, noise.device):  # denoising steps, not batch rows
        x = x - dt * velocity_fn(x, tau.expand(x.shape[0]), obs)
    return x


def velocity_jacobian(velocity_fn: VelocityFn, x: torch.Tensor, tau: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """(B, A, A) dv/dx per sample, vectorised with torch.func (differentiable in captured parameters)."""

    def single(xi: torch.Tensor, ti: torch.Tensor, oi: torch.Tensor) -> torch.Tensor:
        return velocity_fn(xi[None], ti[None], oi[None])[0]

    return vmap(jacrev(single))(x, tau, obs)


def _gaussian_logpdf(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def _invert_euler_step(
    velocity_fn: VelocityFn,
    x_next: torch.Tensor,
    tau: torch.Tensor,
    obs: torch.Tensor,
    dt: float,
    *,
    max_iters: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve y - dt * v(y, tau) = x_next for y by Newton's method, batched; no autograd graph.

    Returns y (B, A) and (B,) whether each row converged (residual <= 1e3 * tol)."""
    with torch.no_grad():
        y = x_next + dt * velocity_fn(x_next, tau, obs)  # explicit guess, exact up to O(dt^2)
        eye = torch.eye(y.shape[-1], device=y.device, dtype=y.dtype)
        for _ in range(max_iters):
            residual = y - dt * velocity_fn(y, tau, obs) - x_next  # (B, A)
            if residual.abs().max() <= tol:
                break
            jac = eye - dt * velocity_jacobian(velocity_fn, y, tau, obs)  # (B, A, A)
            step = torch.linalg.solve_ex(jac, residual[..., None])[0].squeeze(-1)
            y = y - torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)  # a singular row stops moving
        residual = y - dt * velocity_fn(y, tau, obs) - x_next
    return y, residual.abs().amax(-1) <= 1e3 * tol


def euler_loglik(
    velocity_fn: VelocityFn,
    obs: torch.Tensor,
    actions: torch.Tensor,
    num_steps: int,
    *,
    max_iters: int = 50,
    tol: float = 1e-6,
    on_fail: Literal["raise", "nan"] = "raise",
) -> torch.Tensor:
    """(B,) exact log-likelihood of ``actions`` under the N-step Euler sampler started from N(0, I).

    The sampler is the map z -> a composed of x -> x - dt * v(x, tau_k), so by change of variables
    log pi(a | s) = log N(z) - sum_k log |det(I - dt * dv/dx (x_k, tau_k))|, with the path found by
    inverting each step (Newton). Gradients with respect to the velocity's parameters are exact: each
    inverted state is re-expressed by one Newton correction at the solution, whose derivative is the
    implicit-function derivative.

    A step map need not be invertible: where dt * dv/dx has an eigenvalue near 1 (a stiff velocity, e.g. of a
    behaviour-cloned policy) Newton's method can fail for some actions, or converge to a spurious root of a
    non-injective map far out in the noise's tail (|z| in the hundreds, log-likelihoods of -1e5, where the
    sampler's own root, which dominates the density, was missed). ``on_fail="raise"`` raises where Newton
    fails; ``"nan"`` gives NaN to those rows and to rows whose noise |z|^2 lies beyond a 1e-9 chi-square tail
    (no gradient is defined for them; call without grad, or select the finite rows and call again).

    Args:
        obs: (B, S). actions: (B, A) in the sampler's (scaled) units.
    """
    dt = 1.0 / num_steps
    eye = torch.eye(actions.shape[-1], device=actions.device, dtype=actions.dtype)
    x = actions
    log_det = torch.zeros(actions.shape[0], device=actions.device, dtype=actions.dtype)
    inverted = torch.ones(actions.shape[0], dtype=torch.bool, device=actions.device)  # (B,)
    for tau_k in euler_times(num_steps, actions.device).flip(0):  # from tau = dt back to tau = 1
        tau = tau_k.expand(actions.shape[0])
        y, converged = _invert_euler_step(velocity_fn, x.detach(), tau, obs, dt, max_iters=max_iters, tol=tol)
        inverted &= converged
        if not inverted.all() and on_fail == "raise":
            raise RuntimeError(
                f"Euler inversion did not converge for {int((~inverted).sum())} of {len(inverted)} actions at "
                f"tau = {float(tau_k):.3f}; the step map may not be invertible at this step count"
            )
        if torch.is_grad_enabled():
            with torch.no_grad():
                jac_star = eye - dt * velocity_jacobian(velocity_fn, y, tau, obs)
            residual = y - dt * velocity_fn(y, tau, obs) - x  # zero in value, carries the gradient
            y = y - torch.linalg.solve_ex(jac_star, residual[..., None])[0].squeeze(-1)
        jac = eye - dt * velocity_jacobian(velocity_fn, y, tau, obs)  # (B, A, A)
        log_det = log_det + torch.linalg.slogdet(jac).logabsdet
        x = y
    if on_fail == "nan":  # a root far out in the noise's tail is a spurious one: the sampler's own is missed
        inverted &= x.detach().pow(2).sum(-1) <= _noise_norm2_bound(x.shape[-1])
    loglik = _gaussian_logpdf(x) - log_det
    return loglik if inverted.all() else loglik.masked_fill(~inverted, float("nan"))


def _noise_norm2_bound(dim: int) -> float:
    """|z|^2 above which N(0, I_dim) noise has probability below about 1e-9 (a loose chi-square tail bound)."""
    return dim + 12.0 * math.sqrt(2.0 * dim) + 20.0


def ode_loglik(
    velocity_fn: VelocityFn, obs: torch.Tensor, actions: torch.Tensor, *, num_steps: int = 200
) -> torch.Tensor:
    """(B,) log-likelihood of the continuous-time flow with the exact divergence (small A), by RK4.

    Integrates dx/dtau = v and d(logdet)/dtau = tr(dv/dx) from tau = 0 (the action) to tau = 1;
    log pi(a | s) = log N(x_1) + int_0^1 tr(dv/dx) dtau.
    """

    def field(x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.full((x.shape[0],), tau, device=x.device, dtype=x.dtype)
        jac = velocity_jacobian(velocity_fn, x, t, obs)
        return velocity_fn(x, t, obs), jac.diagonal(dim1=-2, dim2=-1).sum(-1)

    h = 1.0 / num_steps
    x = actions
    div_integral = torch.zeros(actions.shape[0], device=actions.device, dtype=actions.dtype)
    for k in range(num_steps):  # RK4 time steps
        tau = k * h
        k1, d1 = field(x, tau)
        k2, d2 = field(x + 0.5 * h * k1, tau + 0.5 * h)
        k3, d3 = field(x + 0.5 * h * k2, tau + 0.5 * h)
        k4, d4 = field(x + h * k3, tau + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        div_integral = div_integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return _gaussian_logpdf(x) + div_integral
