"""Demonstrations in Minari format: record an expert's episodes, load them as (obs, action) arrays.

Minari (Farama's standard for offline RL data) keeps a dataset as a directory ``<dataset>/data/`` with
``metadata.json`` (spaces, env spec, dataset id) and ``main_data.hdf5`` (one group per episode: T + 1
observations, T actions, rewards, terminations, truncations). ``collect_demonstrations`` wraps a
gymnasium env in ``minari.DataCollector`` and writes such a directory; ``load_demonstrations`` reads one
from a path or from a dataset id under a local root. Nothing is ever downloaded.

Quality knob: the expert is any callable obs -> action (a partly trained checkpoint gives D4RL-style
"medium" data), and ``action_noise`` adds Gaussian noise of that std, relative to the action box's
half-width, before clipping to the box. The dataset stores the action actually executed.

Shape legend: M transitions, E episodes, S observation dim, A action dim.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

PolicyFn = Callable[[np.ndarray], np.ndarray]
"""obs (S,) -> action (A,) in env units."""

MINARI_ROOT_ENV = "MINARI_DATASETS_PATH"


class DemonstrationError(ValueError):
    """A dataset that cannot be used as demonstrations for an env; the message names the file."""


@dataclass(frozen=True)
class CollectionSummary:
    """What ``collect_demonstrations`` wrote."""

    path: Path
    """The dataset directory (holds ``data/``)."""
    dataset_id: str
    episodes: int
    steps: int
    return_mean: float
    return_std: float
    seconds: float
    """Wall time of the episodes (env steps, policy calls and the collector), not of writing the file."""


@dataclass(frozen=True)
class Demonstrations:
    """(obs, action) pairs of a Minari dataset, with the episode each came from."""

    obs: np.ndarray
    """(M, S) float32: the observation each action was taken in (an episode's final one is dropped)."""
    actions: np.ndarray
    """(M, A) float32 executed actions, env units."""
    episode: np.ndarray
    """(M,) int64 episode index 0..E-1, for a held-out split by episode."""
    episode_returns: np.ndarray
    """(E,) undiscounted return of each episode."""
    episode_lengths: np.ndarray
    """(E,) int64 steps of each episode."""
    dataset_id: str
    env_id: str | None
    """The gymnasium id the data was recorded in (from the dataset's env spec), if recorded."""
    path: Path
    """The ``data/`` directory read."""

    @property
    def num_episodes(self) -> int:
        return int(self.episode_lengths.shape[0])


def require_minari(*, collector: bool = False) -> None:
    """Raise an ImportError that says how to install Minari with HDF5 storage (and, to record, its DataCollector)."""
    try:
        import h5py  # noqa: F401
        import minari  # noqa: F401

        if collector:
            import jax  # noqa: F401  (minari.DataCollector's episode buffer uses jax.tree_util)
    except ImportError as exc:
        raise ImportError(
            f"demonstrations need Minari with HDF5 storage and its DataCollector ({exc.name} is missing): "
            "pip install 'dipod[control]' (or 'minari[hdf5,create]')"
        ) from None


# --------------------------------------------------------------------------- recording


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """Point Minari at ``root`` for the duration (it reads the location from the environment)."""
    previous = os.environ.get(MINARI_ROOT_ENV)
    os.environ[MINARI_ROOT_ENV] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MINARI_ROOT_ENV, None)
        else:
            os.environ[MINARI_ROOT_ENV] = previous


def noisy_action(
    action: np.ndarray, low: np.ndarray, high: np.ndarray, noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """(A,) action + noise_std * half-width * N(0, I), clipped to [low, high] (unbounded dims: width 1)."""
    half_width = np.where(np.isfinite(high - low), (high - low) / 2, 1.0)
    if noise_std > 0:
        action = action + noise_std * half_width * rng.standard_normal(action.shape)
    return np.clip(action, low, high).astype(np.float32)


def _check_policy_output(env_id: str, env: gym.Env, policy_fn: PolicyFn, obs: np.ndarray) -> None:
    action = np.asarray(policy_fn(obs))
    expected = env.action_space.shape
    if action.shape != expected:
        raise ValueError(f"expert policy returns actions of shape {action.shape}; {env_id} expects {expected}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"expert policy returns a non-finite action in {env_id}: {action}")


def rollout_episodes(
    env: gym.Env,
    policy_fn: PolicyFn,
    *,
    episodes: int,
    action_noise: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Run ``episodes`` full episodes of ``policy_fn`` (+ noise) in ``env``; returns (returns (E,), env steps).

    Episode i resets with its own seed from a SeedSequence of (seed, 0) and the noise comes from (seed, 1),
    so the same call gives the same episodes whether or not ``env`` is wrapped in a DataCollector.
    """
    seeds = np.random.SeedSequence([seed, 0]).generate_state(episodes)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    returns = np.zeros(episodes)
    steps = 0
    for i in range(episodes):
        obs, _ = env.reset(seed=int(seeds[i]))
        done = False
        while not done:
            action = noisy_action(np.asarray(policy_fn(obs), dtype=np.float64), low, high, action_noise, rng)
            obs, reward, terminated, truncated, _ = env.step(action)
            returns[i] += float(reward)
            steps += 1
            done = bool(terminated or truncated)
    return returns, steps


def _default_dataset_id(out: Path) -> str:
    from minari.dataset.minari_dataset import parse_dataset_id

    name = out.name
    with contextlib.suppress(ValueError, TypeError):
        parse_dataset_id(name)
        return name
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-") or "demos"
    return f"dipod/{slug}-v0"


def collect_demonstrations(
    env_id: str,
    policy_fn: PolicyFn,
    *,
    episodes: int,
    out: str | Path,
    action_noise: float = 0.0,
    seed: int = 0,
    dataset_id: str | None = None,
    max_episode_steps: int | None = None,
    algorithm_name: str = "dipod expert",
    description: str | None = None,
) -> CollectionSummary:
    """Record ``episodes`` episodes of ``policy_fn`` in ``env_id`` into a new Minari dataset at ``out``.

    ``out`` becomes the dataset directory (``out/data/main_data.hdf5`` + ``metadata.json``); it must not
    exist yet (an empty directory is allowed). The dataset id stored in the metadata defaults to
    ``out``'s name when that is a valid Minari id (``name-v0``), else ``dipod/<name>-v0``; to load it by id
    later, put ``out`` at ``$MINARI_DATASETS_PATH/<dataset_id>``. Everything is checked before the first
    step: the env, the id, ``out``, and one call of the policy (its action shape).

    Args:
        policy_fn: obs (S,) -> action (A,), env units; its own randomness is its business.
        action_noise: Gaussian action noise, std relative to the action box's half-width (0: none).
        max_episode_steps: overrides the env's time limit (short episodes for tests).
    """
    require_minari(collector=True)
    from minari import DataCollector
    from minari.dataset.minari_dataset import parse_dataset_id

    out = Path(out).resolve()  # Minari works under its own root: a relative path would be taken twice
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if action_noise < 0:
        raise ValueError(f"action_noise must be >= 0, got {action_noise}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists; demonstrations are written to a new directory")
    dataset_id = dataset_id or _default_dataset_id(out)
    parse_dataset_id(dataset_id)  # raises ValueError naming a malformed id
    make_kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    env = gym.make(env_id, **make_kwargs)
    for kind, space in (("observation", env.observation_space), ("action", env.action_space)):
        if not isinstance(space, gym.spaces.Box):
            env.close()
            raise ValueError(f"{env_id} has a {type(space).__name__} {kind} space; demonstrations need Box spaces")
    probe_obs, _ = env.reset(seed=seed)
    _check_policy_output(env_id, env, policy_fn, probe_obs)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        with _minari_root(staging), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is set to None.*", category=UserWarning)
            collector = DataCollector(env, record_infos=False, data_format="hdf5")
            start = time.perf_counter()
            returns, steps = rollout_episodes(
                collector, policy_fn, episodes=episodes, action_noise=action_noise, seed=seed
            )
            seconds = time.perf_counter() - start
            text = description or (
                f"{episodes} episodes of {algorithm_name} in {env_id}, action noise std {action_noise} "
                f"(relative to the action half-width), seed {seed}; mean return {returns.mean():.2f}"
            )
            collector.create_dataset(
                dataset_id=dataset_id, eval_env=env_id, algorithm_name=algorithm_name, author="dipod",
                description=text,
            )  # fmt: skip
            collector.close()
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(staging / dataset_id, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return CollectionSummary(
        path=out,
        dataset_id=dataset_id,
        episodes=episodes,
        steps=steps,
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        seconds=seconds,
    )


# --------------------------------------------------------------------------- loading


def minari_root(root: str | Path | None = None) -> Path:
    """The local dataset root: ``root``, else $MINARI_DATASETS_PATH, else ~/.minari/datasets (Minari's default)."""
    if root is not None:
        return Path(root)
    env = os.environ.get(MINARI_ROOT_ENV)
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def resolve_dataset(source: str | Path, *, root: str | Path | None = None) -> Path:
    """The ``data/`` directory of a dataset given as a path (dataset dir, its data dir or a file in it) or an id.

    Raises FileNotFoundError naming every place looked at; nothing is downloaded.
    """
    path = Path(source)
    candidates = []
    if path.is_file():
        candidates.append(path.parent)
    candidates += [path / "data", path]
    by_id = minari_root(root) / str(source) / "data"
    candidates.append(by_id)
    for candidate in candidates:
        if (candidate / "metadata.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Minari dataset at {path} (as a path) or {by_id} (as a dataset id under {minari_root(root)}); "
        "expected a directory with data/metadata.json. Datasets are read locally only, never downloaded"
    )


def _check_spaces(data_dir: Path, metadata: dict, env_id: str) -> None:
    """Raise DemonstrationError unless the dataset's Box spaces have the env's shapes."""
    from minari.serialization import deserialize_space

    env = gym.make(env_id)
    env_spaces = {"observation": env.observation_space, "action": env.action_space}
    env.close()
    for kind, env_space in env_spaces.items():
        key = f"{kind}_space"
        if key not in metadata:
            raise DemonstrationError(f"{data_dir / 'metadata.json'} has no {key}; cannot check it against {env_id}")
        space = deserialize_space(metadata[key])
        if not isinstance(space, gym.spaces.Box):
            raise DemonstrationError(
                f"{data_dir / 'metadata.json'}: {kind} space is {type(space).__name__}; demonstrations need a Box"
            )
        if space.shape != env_space.shape:
            raise DemonstrationError(
                f"{data_dir / 'metadata.json'}: {kind} shape {space.shape} does not match {env_id}'s {env_space.shape}"
            )


def load_demonstrations(
    source: str | Path, *, env_id: str | None = None, root: str | Path | None = None
) -> Demonstrations:
    """Read a local Minari dataset into (obs, action) arrays with episode ids.

    Checks, before reading any episode: the dataset exists (``resolve_dataset``), its data file exists,
    it is not empty, and (when ``env_id`` is given) its observation and action shapes match the env's.
    Every error names the file and the mismatch.
    """
    require_minari()
    from minari import MinariDataset

    data_dir = resolve_dataset(source, root=root)
    metadata_file = data_dir / "metadata.json"
    try:
        metadata = json.loads(metadata_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DemonstrationError(f"{metadata_file} is not readable JSON ({exc})") from None
    if metadata.get("data_format", "hdf5") == "hdf5" and not (data_dir / "main_data.hdf5").is_file():
        raise DemonstrationError(f"{data_dir / 'main_data.hdf5'} is missing (metadata found in {metadata_file})")
    if int(metadata.get("total_episodes", 0)) == 0 or int(metadata.get("total_steps", 0)) == 0:
        raise DemonstrationError(
            f"{data_dir} is an empty dataset ({metadata.get('total_episodes', 0)} episodes, "
            f"{metadata.get('total_steps', 0)} steps)"
        )
    if env_id is not None:
        _check_spaces(data_dir, metadata, env_id)

    dataset = MinariDataset(data_dir)
    obs_parts, act_parts, ep_parts, returns, lengths = [], [], [], [], []
    for index, episode in enumerate(dataset.iterate_episodes()):
        actions = np.asarray(episode.actions, dtype=np.float32).reshape(len(episode.actions), -1)  # (T, A)
        obs = np.asarray(episode.observations, dtype=np.float32).reshape(len(episode.observations), -1)  # (T+1, S)
        steps = actions.shape[0]
        obs_parts.append(obs[:steps])
        act_parts.append(actions)
        ep_parts.append(np.full(steps, index, dtype=np.int64))
        returns.append(float(np.sum(episode.rewards)))
        lengths.append(steps)
    obs_all, act_all = np.concatenate(obs_parts), np.concatenate(act_parts)
    if not (np.all(np.isfinite(obs_all)) and np.all(np.isfinite(act_all))):
        bad = int((~np.isfinite(obs_all)).any(-1).sum() + (~np.isfinite(act_all)).any(-1).sum())
        raise DemonstrationError(f"{data_dir / 'main_data.hdf5'}: {bad} transitions hold NaN or inf")
    spec = dataset.env_spec
    return Demonstrations(
        obs=obs_all,
        actions=act_all,
        episode=np.concatenate(ep_parts),
        episode_returns=np.asarray(returns),
        episode_lengths=np.asarray(lengths, dtype=np.int64),
        dataset_id=str(metadata.get("dataset_id", data_dir.parent.name)),
        env_id=None if spec is None else spec.id,
        path=data_dir,
    )


def split_episodes(num_episodes: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train episode ids, held-out episode ids): a seeded random split by whole episodes.

    At least one episode is held out when val_fraction > 0 and there are two or more episodes; at least
    one is always kept for training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(np.random.SeedSequence([seed, 2])).permutation(num_episodes)
    n_val = round(val_fraction * num_episodes)
    n_val = min(max(n_val, 1), num_episodes - 1) if val_fraction > 0 and num_episodes >= 2 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])
