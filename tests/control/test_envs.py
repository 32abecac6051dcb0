"""Vector envs: construction, same-step autoreset with final observations, snapshots; the bandit."""

import numpy as np
import pytest

from dipod.control.envs import (
    MultimodalBandit,
    check_env,
    env_seeds,
    final_observations,
    make_vector_env,
    restore_vector_env,
    snapshot_vector_env,
)


@pytest.mark.parametrize("name", ["Pendulum-v1", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"])
def test_vector_envs_construct_and_step(name):
    envs = make_vector_env(name, 2)
    obs, _ = envs.reset(seed=0)
    assert obs.shape[0] == 2
    obs, rewards, terminated, truncated, _ = envs.step(envs.action_space.sample())
    assert rewards.shape == (2,) and terminated.dtype == bool and truncated.dtype == bool
    envs.close()


def test_same_step_autoreset_reports_the_final_observation():
    envs = make_vector_env("Pendulum-v1", 2)
    envs.reset(seed=0)
    zero = np.zeros((2, 1), dtype=np.float32)
    for _ in range(199):
        _, _, _, truncated, infos = envs.step(zero)
        assert not truncated.any()
        before = final_observations(np.zeros((2, 3)), infos)
        assert np.array_equal(before, np.zeros((2, 3)))  # nothing ended: observations pass through
    obs, _, terminated, truncated, infos = envs.step(zero)  # the 200th step truncates
    assert truncated.all() and not terminated.any()
    reached = final_observations(obs, infos)
    # The returned obs is already the reset one; the final one is different and comes from the info.
    assert not np.allclose(reached, obs)
    np.testing.assert_array_equal(reached[0], infos["final_obs"][0])
    envs.close()


@pytest.mark.parametrize(
    ("name", "mode"), [("Pendulum-v1", "sync"), ("HalfCheetah-v5", "sync"), ("Pendulum-v1", "async")]
)
def test_snapshot_restores_into_a_fresh_vector_env(name, mode):
    envs = make_vector_env(name, 2, mode=mode)
    envs.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        envs.step(rng.uniform(-1, 1, size=envs.action_space.shape).astype(np.float32))
    snaps = snapshot_vector_env(envs)
    actions = [rng.uniform(-1, 1, size=envs.action_space.shape).astype(np.float32) for _ in range(4)]
    expected = [envs.step(a)[:2] for a in actions]
    other = make_vector_env(name, 2, mode=mode)
    other.reset(seed=99)
    restore_vector_env(other, snaps)
    for a, (obs, rew) in zip(actions, expected, strict=True):
        obs2, rew2 = other.step(a)[:2]
        np.testing.assert_array_equal(obs2, obs)
        np.testing.assert_array_equal(rew2, rew)
    envs.close()
    other.close()


def test_bandit_has_two_peaks_and_a_valley():
    env = MultimodalBandit(modes=(-0.7, 0.7), width=0.1)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1,)
    peak, valley = env.reward(np.array([0.7])), env.reward(np.array([0.0]))
    assert peak == pytest.approx(1.0, abs=1e-6)
    assert env.reward(np.array([-0.7])) == pytest.approx(peak)
    assert valley < 1e-6
    _, _, terminated, truncated, _ = env.step(np.array([0.7]))
    assert terminated and not truncated


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("Pendulm-v1", r"control.env = 'Pendulm-v1' cannot be made: .*Did you mean: `Pendulum`"),
        ("CartPole-v1", r"control.env = 'CartPole-v1' has a Discrete action space; .*continuous \(Box\)"),
    ],
)
def test_check_env_names_the_key_the_value_and_why(name, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_env(name)
    check_env("Pendulum-v1")
    check_env("bandit")


def test_env_seeds_are_disjoint_across_seeds_and_streams_and_repeat_for_the_same_seed():
    lists = {(seed, stream): env_seeds(seed, 16, stream) for seed in range(3) for stream in ("env", "eval_env")}
    assert env_seeds(1, 16, "env") == lists[1, "env"]
    assert all(len(set(seeds)) == 16 for seeds in lists.values())
    everything = [s for seeds in lists.values() for s in seeds]
    assert len(set(everything)) == len(everything)  # no sub-env stream shared between runs or with eval


def test_final_observations_replaces_exactly_the_ended_rows():
    next_obs = np.arange(12, dtype=np.float32).reshape(4, 3)
    final = np.empty(4, dtype=object)
    final[1], final[3] = np.full(3, -1.0), np.full(3, -3.0)
    infos = {"final_obs": final, "_final_obs": np.array([False, True, False, True])}
    reached = final_observations(next_obs, infos)
    expected = next_obs.copy()
    expected[1], expected[3] = -1.0, -3.0
    np.testing.assert_array_equal(reached, expected)
    np.testing.assert_array_equal(next_obs, np.arange(12).reshape(4, 3))  # the input is not changed
