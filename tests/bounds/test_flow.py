"""Flow-policy bounds and exact likelihoods against closed forms and finite differences."""

import math

import pytest
import torch
from torch import nn

from dipod.bounds.flow import (
    cfm_elbo,
    cfm_loss,
    draw_flow_noise,
    euler_loglik,
    euler_sample,
    ode_loglik,
)

A, S = 2, 3


class LinearField(nn.Module):
    """v(x, tau, s) = M x + tau * c + W s: every Euler step is affine, so the sampler is Gaussian."""

    def __init__(self, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.m = nn.Parameter((0.6 * torch.randn(A, A, generator=g)).to(dtype))
        self.c = nn.Parameter(torch.randn(A, generator=g).to(dtype))
        self.w = nn.Parameter((0.3 * torch.randn(S, A, generator=g)).to(dtype))

    def forward(self, x, tau, obs):
        return x @ self.m.T + tau[:, None] * self.c + obs @ self.w


class MLPField(nn.Module):
    """A small nonlinear velocity field with a time input."""

    def __init__(self, seed=0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(A + 1 + S, 32), nn.Tanh(), nn.Linear(32, A)).to(dtype)

    def forward(self, x, tau, obs):
        return 0.7 * self.net(torch.cat([x, tau[:, None], obs], -1))


def _obs(batch=5, seed=0):
    return torch.randn(batch, S, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_flow_noise_schedule_and_determinism():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    d1 = draw_flow_noise(1000, 4, A, generator=g1)
    d2 = draw_flow_noise(1000, 4, A, generator=g2)
    assert torch.equal(d1.tau, d2.tau) and torch.equal(d1.eps, d2.eps)
    assert d1.tau.min() >= 0.005 and d1.tau.max() <= 0.995
    assert abs(d1.tau.mean().item() - 0.5) < 0.02  # beta_t = 1: uniform
    skewed = draw_flow_noise(1000, 4, A, generator=g1, beta_t=3.0)
    assert skewed.tau.mean() < 0.3  # 1 - (1 - u)^(1/3) leans towards the data end


def test_cfm_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    obs, actions = _obs(3).float(), torch.randn(3, A, generator=g)
    draws = draw_flow_noise(3, 4, A, generator=g)
    zero = lambda x, tau, s: torch.zeros_like(x)  # noqa: E731
    expected = (draws.eps - actions[:, None]).pow(2).mean(-1)  # target eps - a, prediction 0
    torch.testing.assert_close(cfm_loss(zero, obs, actions, draws), expected)
    # the field that is exactly right for one draw has zero loss there
    tau0, eps0 = draws.tau[0, 0], draws.eps[0, 0]
    x0 = tau0 * eps0 + (1 - tau0) * actions[0]
    exact = lambda x, tau, s: torch.where(torch.isclose(x, x0).all(-1, keepdim=True), eps0 - actions[0], 0 * x)  # noqa: E731
    assert cfm_loss(exact, obs, actions, draws)[0, 0] == 0
    torch.testing.assert_close(cfm_elbo(expected), -expected.mean(-1))


def test_cfm_loss_uses_one_forward_pass():
    field = MLPField().float()
    calls = []
    field.register_forward_hook(lambda *_: calls.append(1))
    draws = draw_flow_noise(6, 16, A, generator=torch.Generator().manual_seed(0))
    cfm_loss(field, _obs(6).float(), torch.randn(6, A), draws)
    assert len(calls) == 1


def _affine_sampler(field, obs, steps):
    """a = C z + d for the linear field: d from z = 0, columns of C from unit vectors."""
    with torch.no_grad():
        d = euler_sample(field, obs, torch.zeros(obs.shape[0], A, dtype=obs.dtype), steps)
        cols = [
            euler_sample(field, obs, torch.eye(A, dtype=obs.dtype)[i].expand(obs.shape[0], A), steps) - d
            for i in range(A)
        ]
    return torch.stack(cols, -1), d  # (B, A, A), (B, A)


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_euler_loglik_matches_closed_form_for_a_linear_field(steps):
    field, obs = LinearField(), _obs()
    c, d = _affine_sampler(field, obs, steps)
    z = torch.randn(obs.shape[0], A, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = euler_sample(field, obs, z, steps).detach()
    closed = torch.distributions.MultivariateNormal(d, scale_tril=torch.linalg.cholesky(c @ c.transpose(-1, -2)))
    with torch.no_grad():
        torch.testing.assert_close(euler_loglik(field, obs, a, steps), closed.log_prob(a), atol=1e-5, rtol=0)


def test_euler_loglik_recovers_the_path_of_a_nonlinear_field():
    field, obs = MLPField(), _obs()
    z = torch.randn(obs.shape[0], A, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    steps = 8
    a = euler_sample(field, obs, z, steps).detach()
    # forward log-density along the known path: log N(z) - sum log|det(I - dt J)|
    from dipod.bounds.flow import euler_times, velocity_jacobian

    x, logdet, dt = z, torch.zeros(obs.shape[0], dtype=torch.float64), 1 / steps
    with torch.no_grad():
        for tau in euler_times(steps):
            t = tau.to(torch.float64).expand(obs.shape[0])
            jac = torch.eye(A, dtype=torch.float64) - dt * velocity_jacobian(field, x, t, obs)
            logdet += torch.linalg.slogdet(jac).logabsdet
            x = x - dt * field(x, t, obs)
        forward = -0.5 * z.pow(2).sum(-1) - A / 2 * math.log(2 * math.pi) - logdet
        torch.testing.assert_close(euler_loglik(field, obs, a, steps), forward, atol=1e-8, rtol=0)


def test_euler_loglik_marks_actions_without_a_preimage():
    """One Euler step with v(x) = x - tanh(x) maps y to tanh(y): 0.5 has the preimage atanh(0.5), 2.0 has none."""

    def field(x, tau, obs):
        return x - torch.tanh(x)

    a = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    obs = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="did not converge for 1 of 2 actions"):
        euler_loglik(field, obs, a, 1)
    loglik = euler_loglik(field, obs, a, 1, on_fail="nan")
    y = torch.atanh(torch.tensor(0.5, dtype=torch.float64))
    exact = -0.5 * y**2 - 0.5 * math.log(2 * math.pi) - torch.log(1 - torch.tanh(y) ** 2)  # log N(y) - log f'(y)
    torch.testing.assert_close(loglik[0], exact, atol=1e-8, rtol=0)
    assert torch.isnan(loglik[1])


def test_euler_loglik_leaves_out_roots_in_the_far_tail_of_the_noise():
    """One step of v(x) = 0.999 x maps y to y / 1000: the action 1.0 needs noise 1000, which the sampler never
    draws; a root like that, of a non-injective map, is a spurious one, so "nan" mode drops it."""

    def field(x, tau, obs):
        return 0.999 * x

    a = torch.tensor([[0.001], [1.0]], dtype=torch.float64)
    obs = torch.zeros(2, 1, dtype=torch.float64)
    exact = euler_loglik(field, obs, a, 1)  # raise mode: the change of variables as it is
    torch.testing.assert_close(exact, -0.5 * (a[:, 0] * 1000) ** 2 - 0.5 * math.log(2 * math.pi) + math.log(1000))
    kept = euler_loglik(field, obs, a, 1, on_fail="nan")
    assert kept[0] == exact[0] and torch.isnan(kept[1])


def test_euler_loglik_approaches_the_ode_loglik():
    field, obs = MLPField(seed=3), _obs()
    a = torch.randn(obs.shape[0], A, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ode = ode_loglik(field, obs, a, num_steps=100)
        errors = [(euler_loglik(field, obs, a, n) - ode).abs().max().item() for n in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02 and errors[0] > 4 * errors[2]  # first-order convergence


def test_euler_loglik_gradient_matches_finite_differences():
    field, obs = MLPField(seed=4), _obs(3)
    a = torch.randn(3, A, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    param = field.net[0].weight
    euler_loglik(field, obs, a, 6).sum().backward()
    analytic = param.grad[1, 2].item()
    h = 1e-6
    with torch.no_grad():
        param[1, 2] += h
        up = euler_loglik(field, obs, a, 6, tol=1e-12).sum().item()
        param[1, 2] -= 2 * h
        down = euler_loglik(field, obs, a, 6, tol=1e-12).sum().item()
    assert analytic == pytest.approx((up - down) / (2 * h), rel=1e-5)


def test_euler_loglik_is_a_normalised_density_in_one_dimension():
    class Field1D(nn.Module):
        def forward(self, x, tau, obs):
            return 0.8 * torch.tanh(2 * x) * (1 + tau[:, None]) - 0.5 * x - 0.3

    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)[:, None]
    obs = torch.zeros(len(grid), 1, dtype=torch.float64)
    with torch.no_grad():
        density = euler_loglik(Field1D(), obs, grid, 5).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-4)


def test_euler_loglik_batched_equals_per_sample():
    field, obs = MLPField(seed=5), _obs(4)
    a = torch.randn(4, A, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        batched = euler_loglik(field, obs, a, 8)
        single = torch.cat([euler_loglik(field, obs[i : i + 1], a[i : i + 1], 8) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-10, rtol=0)
