"""Collection throughput: env steps per second recording demonstrations with minari.DataCollector vs without it.

Same episodes both ways (``rollout_episodes`` seeds every reset and the action noise), Hopper-v5 and
Pendulum-v1, repetitions interleaved (bare, collector, bare, ...) so machine noise hits both alike. Two
experts: a constant-cost linear map (the collector's own overhead shows) and a flow policy with 8 Euler
steps through ``actor_policy_fn`` (what collecting from a dipod checkpoint costs). ``*_with_write`` adds
writing the HDF5 dataset (``collect_demonstrations`` end to end) to the collector's time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dipod.control.bc import actor_policy_fn
from dipod.control.demos import collect_demonstrations, rollout_episodes
from dipod.control.normalizer import RunningNorm
from dipod.control.policy import FlowPolicy


def _linear_expert(obs_dim: int, act_dim: int):
    weights = np.random.default_rng(0).standard_normal((act_dim, obs_dim)) * 0.1

    def policy(obs: np.ndarray) -> np.ndarray:
        return (weights @ obs).astype(np.float32)

    return policy


def _flow_expert(obs_dim: int, act_dim: int):
    actor = FlowPolicy(obs_dim, act_dim, sampling_steps=8, generator=torch.Generator().manual_seed(0)).eval()
    return actor_policy_fn(actor, RunningNorm(obs_dim), generator=torch.Generator().manual_seed(1))


def _measure(env_id: str, make_expert, episodes: int, max_steps: int, reps: int) -> dict[str, float]:
    from minari import DataCollector

    probe = gym.make(env_id)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    bare_t = coll_t = write_t = 0.0
    bare_steps = coll_steps = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            env = gym.make(env_id, max_episode_steps=max_steps)
            start = time.perf_counter()
            expert = make_expert(obs_dim, act_dim)
            _, steps = rollout_episodes(env, expert, episodes=episodes, action_noise=0.1, seed=rep)
            bare_t += time.perf_counter() - start
            bare_steps += steps
            env.close()

            collector = DataCollector(gym.make(env_id, max_episode_steps=max_steps), data_format="hdf5")
            start = time.perf_counter()
            _, steps = rollout_episodes(
                collector, make_expert(obs_dim, act_dim), episodes=episodes, action_noise=0.1, seed=rep
            )
            coll_t += time.perf_counter() - start
            coll_steps += steps
            collector.close()

            start = time.perf_counter()
            summary = collect_demonstrations(
                env_id, make_expert(obs_dim, act_dim), episodes=episodes, out=Path(tmp) / f"d{rep}",
                action_noise=0.1, seed=rep, max_episode_steps=max_steps,
            )  # fmt: skip
            write_t += time.perf_counter() - start - summary.seconds
    assert bare_steps == coll_steps, "the same seeds must give the same episodes"
    bare_sps, coll_sps = bare_steps / bare_t, coll_steps / coll_t
    return {
        "bare_steps_per_s": bare_sps,
        "collector_steps_per_s": coll_sps,
        "collector_over_bare": coll_sps / bare_sps,
        "collector_over_bare_with_write": bare_t / (coll_t + write_t),
        "steps_per_rep": bare_steps / reps,
    }


def _warm_up() -> None:
    """One short collection, so one-time costs (the collector's first step imports jax) stay out of the timings."""
    from minari import DataCollector

    collector = DataCollector(gym.make("Pendulum-v1", max_episode_steps=5), data_format="hdf5")
    rollout_episodes(collector, _linear_expert(3, 1), episodes=1)
    collector.close()


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    _warm_up()
    episodes, reps = (3, 2) if quick else (10, 3)
    figures: dict[str, float] = {}
    for env_id, tag in (("Hopper-v5", "hopper"), ("Pendulum-v1", "pendulum")):
        for expert, name in ((_linear_expert, "linear"), (_flow_expert, "flow")):
            for key, value in _measure(env_id, expert, episodes, 200, reps).items():
                figures[f"{tag}_{name}_{key}"] = value
    return {
        "figures": figures,
        "reference": (
            "the same seeded episodes stepped in the bare gymnasium env (no DataCollector), same run; "
            f"{episodes} episodes x {reps} repetitions, time limit 200 steps, action noise 0.1"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    quick = "--quick" in sys.argv
    result = {"name": "collect", **run(quick), "quick": quick}
    print(json.dumps(result, indent=2))
