"""Environments: gymnasium vector envs with same-step autoreset and snapshots, and a multimodal bandit.

Autoreset mode. gymnasium 1.x defaults to NEXT_STEP autoreset, where the step after an episode ends
returns the reset observation and ignores the action, which would put a fake transition in every
rollout. dipod builds vector envs with ``AutoresetMode.SAME_STEP``: the step that ends an episode
already returns the *reset* observation, and the final observation sits in ``info["final_obs"]``
(masked by ``info["_final_obs"]``). The trainer bootstraps truncated episodes from that final
observation and never from the reset one.

Snapshots. Bit-for-bit resume needs the environments' state too. Every sub-env is wrapped in
``Snapshot``, whose ``snapshot()`` pickles the instance dictionaries along the wrapper chain (episode
step counters, physics state, the env's numpy RNG) and whose ``restore(states)`` puts them back; both
run inside the sub-env, so they work for sync and async vector envs alike. Static, heavy members
(a MuJoCo model, renderers, spaces) are left out and kept from construction.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dipod.seeding import int_seeds

# Members that never change after construction (or cannot be pickled cheaply); kept from the new env.
_STATIC_KEYS = frozenset(
    {
        "env",
        "model",
        "mujoco_renderer",
        "spec",
        "_cached_spec",
        "observation_space",
        "action_space",
        "metadata",
        "render_mode",
        "screen",
        "clock",
        "fullpath",
        "_ezpickle_args",
        "_ezpickle_kwargs",
    }
)


class Snapshot(gym.Wrapper):
    """Outermost wrapper of a sub-env that can save and restore the whole chain's mutable state."""

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index

    def _layers(self) -> list[Any]:
        layers, node = [], self.env
        while True:
            layers.append(node)
            if not hasattr(node, "env") or node is node.unwrapped:
                break
            node = node.env
        return layers

    def snapshot(self) -> bytes:
        """Pickled mutable state of every layer under this wrapper."""
        states = [{k: v for k, v in vars(layer).items() if k not in _STATIC_KEYS} for layer in self._layers()]
        return pickle.dumps(states)

    def restore(self, snapshots: list[bytes]) -> None:
        """Load this sub-env's entry of ``snapshots`` (one per sub-env, indexed like the vector env)."""
        states = pickle.loads(snapshots[self.index])
        for layer, state in zip(self._layers(), states, strict=True):
            vars(layer).update(state)
        base = self.env.unwrapped
        renderer = getattr(base, "mujoco_renderer", None)
        if renderer is not None and hasattr(base, "data"):
            renderer.data = base.data  # the renderer must draw the restored physics state


class MultimodalBandit(gym.Env):
    """One-step bandit with two separated reward peaks and a valley between them.

    r(a) = exp(-(a - m1)^2 / (2 w^2)) + exp(-(a - m2)^2 / (2 w^2)), a in [-1, 1]. The best policies
    put their mass on the peaks; a unimodal Gaussian either collapses onto one peak or, more typically,
    averages the two and sits in the valley, while a flow policy can keep both.
    The observation is a constant zero vector, so the problem is a contextless bandit.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, modes: tuple[float, float] = (-0.7, 0.7), width: float = 0.1) -> None:
        self.modes = np.asarray(modes, dtype=np.float64)
        self.width = width
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reward(self, action: np.ndarray) -> float:
        a = float(np.asarray(action).reshape(-1)[0])
        return float(np.exp(-((a - self.modes) ** 2) / (2 * self.width**2)).sum())

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(1, dtype=np.float32), self.reward(action), True, False, {}


def check_env(name: str) -> None:
    """Raise a ValueError naming ``control.env`` unless ``name`` is ``bandit`` or a gymnasium id with Box spaces.

    Runs before the vector env is built, so a typo or a discrete-action env fails with one message
    instead of a traceback from a sub-env (or from a worker process of an async vector env).
    """
    if name in CUSTOM_ENVS:
        return
    try:
        env = gym.make(name)
    except gym.error.Error as exc:
        raise ValueError(f"control.env = {name!r} cannot be made: {exc}") from None
    spaces = {"action": env.action_space, "observation": env.observation_space}
    env.close()
    for kind, space in spaces.items():
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(
                f"control.env = {name!r} has a {type(space).__name__} {kind} space; flow and Gaussian policies "
                "need a continuous (Box) one"
            )


def env_seeds(seed: int, num_envs: int, stream: str = "env") -> list[int]:
    """Reset seeds of ``num_envs`` sub-envs from the run's named stream (``env`` training, ``eval_env`` evaluation).

    gymnasium's ``reset(seed=s)`` seeds sub-env i with s + i, so runs with neighbouring seeds would
    share most sub-env streams; seeds spawned from ``SeedSequence([seed, stream])`` are unrelated.
    """
    return int_seeds(seed, stream, num_envs)


CUSTOM_ENVS: dict[str, Callable[..., gym.Env]] = {"bandit": MultimodalBandit}
"""Envs dipod defines itself, by ``control.env`` name; any other name is a gymnasium id."""


def make_env(name: str, index: int, **kwargs: Any) -> gym.Env:
    """One sub-env, wrapped in ``Snapshot``: a custom env built with ``kwargs``, or a gymnasium id."""
    env = CUSTOM_ENVS[name](**kwargs) if name in CUSTOM_ENVS else gym.make(name, **kwargs)
    return Snapshot(env, index)


def make_vector_env(name: str, num_envs: int, *, mode: str = "sync", **kwargs: Any) -> gym.vector.VectorEnv:
    """A gymnasium vector env of ``num_envs`` copies with SAME_STEP autoreset (see the module docstring)."""
    thunks = [lambda i=i: make_env(name, i, **kwargs) for i in range(num_envs)]
    if mode == "sync":
        return gym.vector.SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
    if mode == "async":
        return gym.vector.AsyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
    raise ValueError(f"unknown vector mode {mode!r}; expected 'sync' or 'async'")


def snapshot_vector_env(envs: gym.vector.VectorEnv) -> list[bytes]:
    """Per-sub-env snapshots (picklable bytes)."""
    return list(envs.call("snapshot"))


def restore_vector_env(envs: gym.vector.VectorEnv, snapshots: list[bytes]) -> None:
    """Put sub-env states taken by ``snapshot_vector_env`` back."""
    if len(snapshots) != envs.num_envs:
        raise ValueError(f"got {len(snapshots)} env snapshots for a vector env of {envs.num_envs}")
    envs.call("restore", list(snapshots))


def final_observations(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """(E, S) the observation each env actually reached: ``final_obs`` where an episode ended this step."""
    real = np.array(next_obs, copy=True)
    if "_final_obs" in infos:
        ended = np.asarray(infos["_final_obs"], dtype=bool)  # (E,)
        if ended.any():
            real[ended] = np.stack(infos["final_obs"][ended])
    return real
