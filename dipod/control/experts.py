"""Experts for demonstrations: the actor of a dipod control checkpoint as an obs -> action callable.

Any checkpoint a control run writes (``dipod train``: flow or Gaussian policy, with its observation
normaliser) or a BC checkpoint (``dipod.control.bc``) can drive ``collect_demonstrations``. A partly
trained checkpoint gives "medium" data, as D4RL's medium datasets come from a partly trained policy.
The actor is rebuilt from the config saved inside the checkpoint; no environments are stepped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dipod.checkpoints import latest_checkpoint, load_checkpoint
from dipod.control.bc import BC_KIND, actor_kwargs, actor_policy_fn, load_pretrained_actor
from dipod.control.config import ControlRunConfig as RunConfig
from dipod.control.demos import PolicyFn
from dipod.control.normalizer import RunningNorm
from dipod.control.policy import FlowPolicy, GaussianPolicy


@dataclass
class RunActor:
    """A checkpoint's actor and normaliser, and where they came from."""

    actor: FlowPolicy | GaussianPolicy
    normalizer: RunningNorm | None
    env: str
    path: Path
    """The checkpoint file read."""
    step: int
    """Training steps (RL iterations or BC steps) behind the checkpoint."""


def _checkpoint_file(path: str | Path) -> tuple[Path, dict]:
    path = Path(path)
    if path.is_file():
        return path, load_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    for directory in (path / "checkpoints", path):
        found = latest_checkpoint(directory)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path} holds no checkpoint (looked in {path / 'checkpoints'} and {path})")


def load_run_actor(path: str | Path, *, device: torch.device | str = "cpu") -> RunActor:
    """The actor of a control run's or a BC run's checkpoint (a file, or a run directory: its newest one)."""
    file, payload = _checkpoint_file(path)
    bc_state = payload.get("trainer", {})
    if isinstance(bc_state, dict) and bc_state.get("kind") == BC_KIND:  # a BC run's checkpoint
        pre = load_pretrained_actor(file, bc_state["obs_dim"], bc_state["action_dim"], device=device)
        return RunActor(pre.actor, pre.normalizer, pre.env, file, int(bc_state["step"]))
    if "config" not in payload or "actor" not in payload["trainer"]:
        raise ValueError(f"checkpoint {file} holds no run config or actor; it is not a control run's checkpoint")
    cfg = RunConfig.model_validate(payload["config"])
    cc = cfg.control
    if cc is None:
        raise ValueError(f"checkpoint {file} is a {cfg.domain} run; experts come from control runs")
    if cc.env == "bandit":
        raise ValueError(f"checkpoint {file} was trained on the bandit, which has no episodes to record")
    env = gym.make(cc.env)
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    env.close()
    state = payload["trainer"]
    if cc.policy == "flow":
        actor: FlowPolicy | GaussianPolicy = FlowPolicy(obs_dim, act_dim, **actor_kwargs(cc))
    else:
        actor = GaussianPolicy(obs_dim, act_dim, hidden=cc.actor_hidden, activation=cc.activation)
    actor.load_state_dict(state["actor"])
    normalizer = None
    if cc.normalize_obs:
        normalizer = RunningNorm(obs_dim)
        normalizer.load_state_dict(state["normalizer"])
        normalizer.to(device)
    return RunActor(actor.to(device).eval(), normalizer, cc.env, file, int(state["step"]))


def expert_policy_fn(
    path: str | Path, *, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[PolicyFn, RunActor]:
    """(obs -> action callable for ``collect_demonstrations``, the loaded actor) from a checkpoint.

    The policy samples as in training (flow noise or Gaussian noise) from a generator seeded with ``seed``.
    """
    loaded = load_run_actor(path, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    return actor_policy_fn(loaded.actor, loaded.normalizer, generator=generator), loaded
