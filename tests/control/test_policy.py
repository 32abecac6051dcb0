"""Flow policy: deterministic sampling, per-draw CFM losses, action scaling in the likelihood; Gaussian baseline."""

import math

import torch

from dipod.bounds.flow import draw_flow_noise
from dipod.control.policy import Critic, FlowPolicy, GaussianPolicy, time_embedding

OBS, ACT, B = 3, 2, 5


def _policy(scale: float = 1.0, seed: int = 0) -> FlowPolicy:
    return FlowPolicy(
        OBS, ACT, hidden=(16, 16), actor_scale=scale, sampling_steps=4, generator=torch.Generator().manual_seed(seed)
    )


def test_init_depends_on_the_generator_only():
    a, b, c = _policy(seed=0), _policy(seed=0), _policy(seed=1)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_sample_is_deterministic_given_generator():
    policy = _policy()
    obs = torch.randn(B, OBS, generator=torch.Generator().manual_seed(3))
    a1 = policy.sample(obs, torch.Generator().manual_seed(7))
    a2 = policy.sample(obs, torch.Generator().manual_seed(7))
    a3 = policy.sample(obs, torch.Generator().manual_seed(8))
    assert a1.shape == (B, ACT)
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)


def test_time_embedding_is_sin_cos_of_doubling_frequencies():
    tau = torch.tensor([0.25])
    emb = time_embedding(tau, 4)
    # frequencies pi * [1, 2]: sin(pi/4), sin(pi/2), cos(pi/4), cos(pi/2)
    expected = torch.tensor([[math.sin(math.pi / 4), 1.0, math.cos(math.pi / 4), 0.0]])
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)


def test_cfm_losses_divide_actions_by_the_scale():
    policy = _policy(scale=2.0)
    obs = torch.randn(B, OBS)
    actions = torch.randn(B, ACT)
    draws = draw_flow_noise(B, 6, ACT, generator=torch.Generator().manual_seed(0))
    losses = policy.cfm_losses(obs, actions, draws)
    assert losses.shape == (B, 6)
    unscaled = _policy(scale=1.0).cfm_losses(obs, actions / 2.0, draws)
    torch.testing.assert_close(losses, unscaled)


def test_loglik_with_zero_velocity_is_scaled_gaussian():
    # With v == 0 the sampler is a = scale * z, so log pi(a) = log N(a; 0, scale^2 I).
    policy = _policy(scale=1.5)
    torch.nn.init.zeros_(policy.net[-1].weight)
    torch.nn.init.zeros_(policy.net[-1].bias)
    obs = torch.randn(B, OBS)
    actions = torch.randn(B, ACT)
    expected = torch.distributions.Normal(0.0, 1.5).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.loglik(obs, actions), expected, atol=1e-5, rtol=0)


def test_gaussian_policy_loglik_and_sampling():
    policy = GaussianPolicy(
        OBS, ACT, hidden=(8,), init_log_std=math.log(0.5), generator=torch.Generator().manual_seed(0)
    )
    obs = torch.randn(B, OBS)
    a1 = policy.sample(obs, torch.Generator().manual_seed(1))
    assert torch.equal(a1, policy.sample(obs, torch.Generator().manual_seed(1)))
    mean = policy.mean_net(obs)
    expected = torch.distributions.Normal(mean, 0.5).log_prob(a1).sum(-1)
    torch.testing.assert_close(policy.loglik(obs, a1), expected)


def test_critic_shape():
    assert Critic(OBS, hidden=(8,))(torch.randn(B, OBS)).shape == (B,)
