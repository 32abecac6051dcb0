"""The weighted flow ELBO against closed forms on Gaussian data with linear velocity fields.

Data a ~ N(mu, s^2) per dimension (A = 2 independent dimensions with different mu, s). Under the path
x_tau = tau * eps + (1 - tau) * a the marginal is N(m_tau, V_tau) with m_tau = (1 - tau) mu and
V_tau = (1 - tau)^2 s^2 + tau^2, and the exact marginal velocity is linear:
    v*(x, tau) = m' + V' / (2 V) (x - m) = k(tau) x + c(tau),
    k = (tau - (1 - tau) s^2) / V,   c = -mu - k (1 - tau) mu.
Its ODE maps N(0, I) at tau = 1 to N(mu, s^2) at tau = 0, so the exact log-likelihood is log N(a; mu, s^2),
and as its own diffusion it is perfect: the ELBO must tend to that log-likelihood as tau_min -> 0.

For a mis-specified linear field v = k x + c the stochastic sampler (reverse SDE, drift 2 v + x / (1 - tau),
g^2 = 2 tau / (1 - tau), from N(0, I) at tau_max, then the decoder) is still Gaussian; its mean and variance
follow linear ODEs, integrated below with RK4 in r = logit(tau). The ELBO must stay below its log density.
"""

import math

import numpy as np
import pytest
import torch

from dipod.bounds.flow import cfm_elbo, cfm_loss, draw_elbo_noise, draw_flow_noise, flow_elbo, ode_loglik

MU = np.array([0.3, -0.5])
STD = np.array([0.5, 0.8])
A = 2


def _coefficients(tau: np.ndarray, k_mul: float = 1.0, c_shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(k, c), each (..., A): the exact marginal velocity of N(MU, STD^2), optionally mis-specified."""
    tau = np.asarray(tau)[..., None]
    var = (1 - tau) ** 2 * STD**2 + tau**2
    k = k_mul * (tau - (1 - tau) * STD**2) / var
    c = -MU - k * (1 - tau) * MU + c_shift
    return k, c


def _field(k_mul: float = 1.0, c_shift: float = 0.0):
    """The same field in torch (works under torch.func transforms): x (M, A), tau (M,) -> (M, A)."""
    mu, std2 = torch.as_tensor(MU), torch.as_tensor(STD**2)

    def velocity(x: torch.Tensor, tau: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        t = tau.to(x.dtype)[:, None]  # (M, 1)
        var = (1 - t) ** 2 * std2 + t**2  # (M, A)
        k = k_mul * (t - (1 - t) * std2) / var
        return k * x - mu - k * (1 - t) * mu + c_shift

    return velocity


def _gauss_logpdf(a: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return (-0.5 * np.log(2 * np.pi * var) - 0.5 * (a - mean) ** 2 / var).sum(-1)


def _sde_model(tau_min: float, tau_max: float, k_mul: float = 1.0, c_shift: float = 0.0, steps: int = 4000):
    """Mean and variance (A,) of the stochastic sampler's output a = x_tau_min / (1 - tau_min) + decoder noise."""
    r0, r1 = math.log(tau_max / (1 - tau_max)), math.log(tau_min / (1 - tau_min))
    h = (r1 - r0) / steps  # negative: from tau_max down to tau_min

    def rhs(r: float, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tau = 1 / (1 + math.exp(-r))
        k, c = _coefficients(tau, k_mul, c_shift)
        drift = 1 / (1 - tau) + 2 * k  # SDE drift 2 (k x + c) + x / (1 - tau) = drift * x + 2 c
        g2 = 2 * tau / (1 - tau)
        jac = tau * (1 - tau)  # dtau / dr
        # Backward in time: d mean = (drift mean + 2c) dtau, d var = (2 drift var - g^2) dtau.
        return (drift * mean + 2 * c) * jac, (2 * drift * var - g2) * jac

    mean, var, r = np.zeros(A), np.ones(A), r0  # prior N(0, I) at tau_max
    for _ in range(steps):
        k1 = rhs(r, mean, var)
        k2 = rhs(r + h / 2, mean + h / 2 * k1[0], var + h / 2 * k1[1])
        k3 = rhs(r + h / 2, mean + h / 2 * k2[0], var + h / 2 * k2[1])
        k4 = rhs(r + h, mean + h * k3[0], var + h * k3[1])
        mean = mean + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        var = var + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        r += h
    return mean / (1 - tau_min), (var + tau_min**2) / (1 - tau_min) ** 2


def _mc_elbo(actions: np.ndarray, *, tau_min, tau_max, rows=64, draws=4096, density="log_uniform", seed=0, **field):
    """Mean and standard error of the estimator over ``rows`` independent copies of each action."""
    a = torch.as_tensor(actions, dtype=torch.float64).repeat_interleave(rows, 0)  # (P * rows, A)
    g = torch.Generator().manual_seed(seed)
    if density == "log_uniform":
        d = draw_elbo_noise(a.shape[0], draws, A, generator=g, tau_min=tau_min, tau_max=tau_max)
    else:
        d = draw_flow_noise(a.shape[0], draws, A, generator=g, tau_min=tau_min, tau_max=tau_max)
    d = type(d)(d.tau.double(), d.eps.double())
    obs = torch.zeros(a.shape[0], 1, dtype=torch.float64)
    losses = cfm_loss(_field(**field), obs, a, d)  # (P * rows, N)
    est = flow_elbo(losses, d.tau, a, tau_min=tau_min, tau_max=tau_max, tau_density=density).view(-1, rows)
    return est.mean(1).numpy(), (est.std(1) / math.sqrt(rows)).numpy()


ACTIONS = np.array([[-1.0, 0.4], [0.3, -0.5], [1.2, -1.6]])


def test_sde_reference_is_exact_for_the_consistent_field():
    # The reference itself: started from N(0, I) at tau_max = 1 - 1e-6 the perfect field's sampler returns
    # N(MU, (V(tau_min) + tau_min^2) / (1 - tau_min)^2), the data noised at tau_min and decoded.
    tau_min = 1e-2
    mean, var = _sde_model(tau_min, 1 - 1e-6)
    v_min = (1 - tau_min) ** 2 * STD**2 + tau_min**2
    np.testing.assert_allclose(mean, MU, atol=1e-5)
    np.testing.assert_allclose(var, (v_min + tau_min**2) / (1 - tau_min) ** 2, rtol=1e-5)


def test_elbo_reaches_the_exact_loglik_of_a_consistent_flow():
    # tau_max = 1 (no prior term), tau_min = 1e-4: the bias is O(tau_min^2) ~ 1e-7, far below the MC error.
    exact = _gauss_logpdf(ACTIONS, MU, STD**2)
    est, se = _mc_elbo(ACTIONS, tau_min=1e-4, tau_max=1.0)
    assert np.all(se < 0.05)
    np.testing.assert_array_less(np.abs(est - exact), 4 * se + 1e-6)
    # The flow's own ODE log-likelihood agrees, so gap = loglik - ELBO has the level 0 here.
    velocity = _field()
    a = torch.as_tensor(ACTIONS, dtype=torch.float64)
    ode = ode_loglik(velocity, torch.zeros(3, 1, dtype=torch.float64), a, num_steps=400).numpy()
    np.testing.assert_allclose(ode, exact, atol=1e-4)


def test_elbo_is_below_the_truncated_models_loglik_and_tightens_with_tau_min():
    # Consistent field, tau_min = 0.05, tau_max = 0.99: the model's density is the data noised and decoded,
    # and the prior N(0, I) at tau_max is not the exact marginal there, so the bound is strictly loose.
    for tau_min, tau_max in [(0.05, 0.99), (0.01, 0.999)]:
        mean, var = _sde_model(tau_min, tau_max)
        logp = _gauss_logpdf(ACTIONS, mean, var)
        est, se = _mc_elbo(ACTIONS, tau_min=tau_min, tau_max=tau_max)
        np.testing.assert_array_less(est - 4 * se, logp)
    # Loose at tau_min = 0.05 (the decoder's noise is not the posterior's), near-tight at 0.01.
    est_coarse, _ = _mc_elbo(ACTIONS, tau_min=0.05, tau_max=1.0)
    est_fine, _ = _mc_elbo(ACTIONS, tau_min=0.005, tau_max=1.0)
    exact = _gauss_logpdf(ACTIONS, MU, STD**2)
    assert np.abs(est_fine - exact).max() < np.abs(est_coarse - exact).max()


@pytest.mark.parametrize("field", [{"k_mul": 0.7}, {"c_shift": 0.3}, {"k_mul": 1.3, "c_shift": -0.2}])
def test_elbo_bounds_the_stochastic_samplers_loglik_for_a_misspecified_field(field):
    tau_min, tau_max = 1e-3, 0.999
    mean, var = _sde_model(tau_min, tau_max, **field)
    logp = _gauss_logpdf(ACTIONS, mean, var)
    est, se = _mc_elbo(ACTIONS, tau_min=tau_min, tau_max=tau_max, **field)
    gap = logp - est
    assert np.all(gap > -4 * se)  # a bound for every action
    assert gap.max() > 0.3 and gap.max() > 10 * se.max()  # and a strict one: this field is not its own diffusion


def test_uniform_draws_estimate_the_same_bound():
    # The rollout's stored draws (uniform tau on [0.005, 0.995]) give the same expectation, with more variance.
    kw = {"tau_min": 0.005, "tau_max": 0.995, "k_mul": 0.8}
    log_uniform, se_log = _mc_elbo(ACTIONS, **kw)
    uniform, se_uni = _mc_elbo(ACTIONS, density="uniform", seed=1, **kw)
    assert np.all(se_uni > se_log)
    np.testing.assert_array_less(np.abs(uniform - log_uniform), 4 * np.hypot(se_uni, se_log))


def test_elbo_differs_from_the_cfm_surrogate_by_weight_and_constant():
    # With tau fixed at one value the estimator is affine in the CFM loss: slope -(1-tau)/tau * A * (width).
    losses = torch.tensor([[0.5], [2.0]])
    tau = torch.full((2, 1), 0.25)
    a = torch.zeros(2, A)
    elbo = flow_elbo(losses, tau, a, tau_min=0.1, tau_max=1.0, tau_density="uniform")
    slope = (elbo[1] - elbo[0]) / (cfm_elbo(losses)[1] - cfm_elbo(losses)[0])
    assert slope.item() == pytest.approx((1 - 0.25) / 0.25 * A * 0.9)
    # Constant: decoder -A/2 (log 2 pi + 1) - A log(0.1 / 0.9), prior KL 0 at tau_max = 1.
    const = -A / 2 * (math.log(2 * math.pi) + 1) - A * math.log(0.1 / 0.9)
    assert elbo[0].item() == pytest.approx(const - 3 * A * 0.9 * 0.5)
    # Prior term at tau_max = 0.6: KL(N(0.4 a, 0.36 I) || N(0, I)) by torch.distributions.
    a = torch.tensor([[0.0, 0.0], [1.5, -2.0]])
    elbo = flow_elbo(torch.ones(2, 1), torch.full((2, 1), 0.25), a, tau_min=0.1, tau_max=0.6, tau_density="uniform")
    q = torch.distributions.Normal(0.4 * a, 0.6)
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert (elbo[0] - elbo[1]).item() == pytest.approx((kl[1] - kl[0]).item())
    assert (const - 3 * A * 0.5 - elbo[0]).item() == pytest.approx(kl[0].item())


def test_draw_elbo_noise_is_stratified_log_uniform_and_checked():
    g = torch.Generator().manual_seed(0)
    d = draw_elbo_noise(2000, 4, A, generator=g, tau_min=1e-3, tau_max=1.0)
    assert d.tau.min() >= 1e-3 and d.tau.max() <= 1.0
    log_tau = d.tau.log()
    # One draw per quarter of [log 1e-3, 0]: stratum j lies in [log 1e-3 * (1 - j/4), log 1e-3 * (1 - (j+1)/4)].
    edges = math.log(1e-3) * (1 - torch.arange(5) / 4)
    assert torch.all(log_tau >= edges[:-1] - 1e-6) and torch.all(log_tau <= edges[1:] + 1e-6)
    with pytest.raises(ValueError, match="tau_min"):
        draw_elbo_noise(2, 2, A, generator=g, tau_min=0.0)
    with pytest.raises(ValueError, match="tau_density"):
        flow_elbo(torch.ones(1, 1), torch.full((1, 1), 0.5), torch.zeros(1, A), tau_min=0.1, tau_max=1.0,
                  tau_density="beta")  # fmt: skip


def test_policy_elbo_is_in_env_units_and_differentiable():
    # FlowPolicy.elbo = flow_elbo of the scaled actions - A log(scale), as FlowPolicy.loglik shifts the exact one.
    from dipod.control.policy import FlowPolicy

    g = torch.Generator().manual_seed(0)
    policy = FlowPolicy(3, A, hidden=(16,), actor_scale=2.0, generator=g)
    obs, actions = torch.randn(4, 3, generator=g), torch.randn(4, A, generator=g)
    draws = draw_elbo_noise(4, 8, A, generator=g)
    bound = policy.elbo(obs, actions, draws)
    scaled = flow_elbo(cfm_loss(policy.velocity, obs, actions / 2.0, draws), draws.tau, actions / 2.0,
                       tau_min=1e-3, tau_max=1.0)  # fmt: skip
    torch.testing.assert_close(bound, scaled - A * math.log(2.0))
    bound.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters())
