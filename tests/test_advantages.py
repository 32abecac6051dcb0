"""Group advantages and GAE against hand-worked examples."""

import pytest
import torch

from dipod.advantages import gae, group_advantages


def test_group_advantages_mean_only_and_with_std():
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 3)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))
    std = group_advantages(rewards, 3, normalize_std=True, eps=0.0)
    torch.testing.assert_close(std[:3], torch.tensor([1.0, -1.0, 0.0]))  # group std is 0.5
    assert torch.isfinite(group_advantages(rewards, 3, normalize_std=True)).all()  # flat group: eps keeps it finite
    with pytest.raises(ValueError, match="prompts \\* 4"):
        group_advantages(rewards, 4)


def test_gae_hand_worked_with_termination_and_truncation():
    # One env, 4 steps, gamma = 0.5, lam = 0.5.
    # t=0: r=1, V=1, V(s1)=2                  -> delta0 = 1 + 0.5*2 - 1 = 1
    # t=1: r=0, V=2, terminated (V(s2) unused) -> delta1 = 0 - 2 = -2
    # t=2: r=1, V=0, V(s3)=4, truncated        -> delta2 = 1 + 0.5*4 - 0 = 3 (bootstraps from the final obs)
    # t=3: r=2, V=1, V(s4)=2                   -> delta3 = 2 + 0.5*2 - 1 = 2
    # A3 = 2 ; A2 = 3 (episode ended: no A3) ; A1 = -2 (ended) ; A0 = 1 + 0.25 * (-2) = 0.5
    rewards = torch.tensor([[1.0], [0.0], [1.0], [2.0]])
    values = torch.tensor([[1.0], [2.0], [0.0], [1.0]])
    next_values = torch.tensor([[2.0], [7.0], [4.0], [2.0]])
    terminated = torch.tensor([[False], [True], [False], [False]])
    truncated = torch.tensor([[False], [False], [True], [False]])
    adv, returns = gae(rewards, values, next_values, terminated, truncated, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5, -2.0, 3.0, 2.0]))
    torch.testing.assert_close(returns, adv + values)


def test_gae_lambda_one_is_the_discounted_return_minus_value():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.rand(5, 3, generator=g), torch.rand(5, 3, generator=g)
    next_values = torch.cat([values[1:], torch.zeros(1, 3)])
    terminated = torch.zeros(5, 3, dtype=torch.bool)
    terminated[-1] = True
    adv, _ = gae(rewards, values, next_values, terminated, torch.zeros_like(terminated), gamma=0.9, lam=1.0)
    discounted = torch.stack([sum(0.9**k * rewards[t + k] for k in range(5 - t)) for t in range(5)])
    torch.testing.assert_close(adv, discounted - values)


def test_gae_keeps_float64_and_does_not_round_gamma_to_float32():
    # gamma = 0.99, lam = 0.95 are not float32 numbers: a float32 mask would round gamma * V and gamma * lam.
    g = torch.Generator().manual_seed(1)
    steps, envs = 50, 2
    rewards = torch.rand(steps, envs, generator=g, dtype=torch.float64)
    values = torch.rand(steps, envs, generator=g, dtype=torch.float64)
    next_values = torch.rand(steps, envs, generator=g, dtype=torch.float64)
    terminated = torch.rand(steps, envs, generator=g) < 0.05
    truncated = torch.rand(steps, envs, generator=g) < 0.05
    adv, returns = gae(rewards, values, next_values, terminated, truncated, gamma=0.99, lam=0.95)
    assert adv.dtype == returns.dtype == torch.float64
    # the recursion in plain Python floats (float64 throughout)
    for e in range(envs):
        running = 0.0
        for t in reversed(range(steps)):
            term, done = bool(terminated[t, e]), bool(terminated[t, e] or truncated[t, e])
            delta = float(rewards[t, e]) + 0.99 * (not term) * float(next_values[t, e]) - float(values[t, e])
            running = delta + 0.99 * 0.95 * (not done) * running
            assert abs(float(adv[t, e]) - running) < 1e-12, (t, e)
