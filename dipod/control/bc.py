"""Behaviour cloning of flow policies on demonstrations, and loading the clone as the actor of an RL run.

BC is conditional flow matching on the dataset's (observation, action) pairs: for each pair draw
(tau, eps), regress the velocity field on eps - a at x_tau = tau * eps + (1 - tau) * a (``cfm_loss``,
the same loss, schedule and action scaling as the RL objectives), i.e. maximise the flow's ELBO on the
demonstrations up to its weighting. Observations are normalised with statistics fitted once on the
training episodes; the normaliser is saved with the policy so that RL starts from the same inputs.

A BC checkpoint is a dipod checkpoint (``dipod.checkpoints``: atomic writes, fallback past a
damaged file) whose payload adds ``kind = "bc"``, the env id, the observation and action sizes, the
actor's constructor arguments and state, and the normaliser. ``load_pretrained_actor`` reads it back
for the RL trainer and refuses one from a different env or architecture before any work.

The pretrain -> fine-tune path, from Python::

    from dipod.runs.config import load_config
    from dipod.control.bc import train_bc
    from dipod.control.demos import collect_demonstrations
    from dipod.control.experts import expert_policy_fn

    expert, _ = expert_policy_fn("runs/hopper_gaussian_ppo", seed=0)  # a partly trained run: "medium"
    collect_demonstrations("Hopper-v5", expert, episodes=100, out="demos/hopper-medium-v0", action_noise=0.1)
    train_bc(load_config("configs/control/hopper_bc.yaml"), out_dir="runs/hopper_bc")
    # then an RL config with control.init_from = runs/hopper_bc (load_pretrained_actor)

Shape legend: M pairs, B batch, N (tau, eps) draws, S observation dim, A action dim.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dipod.bounds.flow import FlowDraws, draw_elbo_noise, draw_flow_noise
from dipod.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
)
from dipod.control.config import ControlConfig
from dipod.control.config import ControlRunConfig as RunConfig
from dipod.control.demos import Demonstrations, load_demonstrations, split_episodes
from dipod.control.envs import check_env, env_seeds, make_vector_env
from dipod.control.normalizer import RunningNorm
from dipod.control.policy import FlowPolicy
from dipod.optim import clip_and_step, loss_is_finite
from dipod.seeding import torch_generator

BC_KIND = "bc"
ARCHITECTURE_KEYS = ("actor_hidden", "activation", "time_embed_dim", "actor_scale", "output_scale")
"""Control settings that define the actor's function; they must match between BC and RL."""
VAL_CHUNK = 4096
"""Held-out pairs scored per forward pass."""


# --------------------------------------------------------------------------- pieces


def actor_kwargs(cc: ControlConfig) -> dict[str, Any]:
    """FlowPolicy constructor arguments from a control config (the ones the RL trainer uses)."""
    return {
        "hidden": tuple(cc.actor_hidden),
        "activation": cc.activation,
        "time_embed_dim": cc.time_embed_dim,
        "actor_scale": cc.actor_scale,
        "output_scale": cc.output_scale,
        "sampling_steps": cc.sampling_steps,
    }


def fit_normalizer(obs: torch.Tensor) -> RunningNorm:
    """A RunningNorm whose statistics are those of ``obs`` (M, S)."""
    norm = RunningNorm(obs.shape[-1])
    norm.update(obs)
    return norm


@dataclass
class BCData:
    """Training and held-out pairs as tensors, split by whole episodes."""

    obs: torch.Tensor
    """(M, S) training observations, raw."""
    actions: torch.Tensor
    """(M, A) training actions, env units."""
    val_obs: torch.Tensor
    """(M_val, S) held-out observations, raw."""
    val_actions: torch.Tensor
    """(M_val, A)."""
    train_episodes: list[int] = field(default_factory=list)
    val_episodes: list[int] = field(default_factory=list)


def split_bc_data(demos: Demonstrations, *, val_fraction: float, seed: int) -> BCData:
    """Pairs of the training and the held-out episodes (``split_episodes``)."""
    train_ep, val_ep = split_episodes(demos.num_episodes, val_fraction=val_fraction, seed=seed)
    is_val = np.isin(demos.episode, val_ep)  # (M,)
    return BCData(
        obs=torch.from_numpy(demos.obs[~is_val]),
        actions=torch.from_numpy(demos.actions[~is_val]),
        val_obs=torch.from_numpy(demos.obs[is_val]),
        val_actions=torch.from_numpy(demos.actions[is_val]),
        train_episodes=train_ep.tolist(),
        val_episodes=val_ep.tolist(),
    )


def bc_loss(actor: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, draws: FlowDraws) -> torch.Tensor:
    """Scalar mean CFM loss of (normalised obs (B, S), env-unit actions (B, A)) over the N draws."""
    return actor.cfm_losses(obs, actions, draws).mean()


@torch.no_grad()
def validation_metrics(
    actor: FlowPolicy,
    obs: torch.Tensor,
    actions: torch.Tensor,
    cfm_draws: FlowDraws,
    elbo_draws: FlowDraws,
    *,
    chunk: int = VAL_CHUNK,
) -> dict[str, float]:
    """``val/cfm_loss`` (the training loss) and ``val/elbo`` (weighted flow ELBO, nats per action) on held-out pairs.

    The draws are fixed for the whole run, so successive values differ only through the weights.
    Args: obs (M, S) normalised, actions (M, A); draws with M rows.
    """
    cfm_sum = elbo_sum = 0.0
    for start in range(0, obs.shape[0], chunk):
        rows = slice(start, start + chunk)
        cfm_sum += float(actor.cfm_losses(obs[rows], actions[rows], cfm_draws[rows]).mean(-1).sum())
        elbo_sum += float(actor.elbo(obs[rows], actions[rows], elbo_draws[rows]).sum())
    return {"val/cfm_loss": cfm_sum / obs.shape[0], "val/elbo": elbo_sum / obs.shape[0]}


@torch.no_grad()
def evaluate_actor(
    actor: FlowPolicy,
    normalizer: RunningNorm | None,
    env_id: str,
    *,
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean return and length of ``episodes`` episodes of the flow policy (one sync vector env each).

    Reset seeds are the RL trainer's evaluation seeds (``env_seeds(seed, episodes, "eval_env")``) and the
    flow noise its evaluation stream, so a clone and its fine-tuned successor are scored alike.
    """
    envs = make_vector_env(env_id, episodes, mode="sync")
    gen = torch.Generator(device=device).manual_seed(seed * 1000 + 5)
    low = torch.as_tensor(envs.single_action_space.low, dtype=torch.float32, device=device)
    high = torch.as_tensor(envs.single_action_space.high, dtype=torch.float32, device=device)
    obs, _ = envs.reset(seed=env_seeds(seed, episodes, "eval_env"))
    returns, lengths = np.zeros(episodes), np.zeros(episodes)
    active = np.ones(episodes, dtype=bool)
    while active.any():
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)  # (E, S)
        actions = actor.sample(normalizer(o) if normalizer is not None else o, gen)  # (E, A)
        obs, rewards, terminated, truncated, _ = envs.step(torch.clamp(actions, low, high).cpu().numpy())
        returns += np.where(active, rewards, 0.0)
        lengths += active
        active &= ~(terminated | truncated)
    envs.close()
    return {"eval/return": float(returns.mean()), "eval/length": float(lengths.mean())}


# --------------------------------------------------------------------------- training


def check_bc_config(cfg: RunConfig) -> str:
    """The dataset a BC run reads; a ValueError naming the key when the config cannot clone."""
    cc = cfg.control
    if cc.policy != "flow":
        raise ValueError(f"behaviour cloning trains flow policies; control.policy = {cc.policy!r}")
    if cc.bc.dataset is None:
        raise ValueError("control.bc.dataset is not set: give a Minari dataset path or id")
    if cc.env == "bandit":
        raise ValueError("control.env = 'bandit' has no demonstrations; behaviour cloning needs a gymnasium env")
    return cc.bc.dataset


def bc_run_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the run loop's schedule taken from ``control.bc``: its steps and checkpoint interval, and
    ``evaluate`` (validation, plus the env return at ``bc.eval_every``) every ``bc.val_every`` steps."""
    bc = cfg.control.bc
    train = cfg.train.model_copy(
        update={"steps": bc.steps, "eval_every": bc.val_every, "checkpoint_every": bc.checkpoint_every}
    )
    return cfg.model_copy(update={"train": train, "drift": cfg.drift.model_copy(update={"every": 0})})


class BCTrainer:
    """Behaviour cloning as a Trainer (``dipod.types.Trainer``): one ``train_step`` is one CFM step on a batch
    of demonstration pairs. ``dipod sft`` runs it through the one run loop (checkpoints, resume).

    Its ``state_dict`` is a BC checkpoint's trainer state: ``kind = "bc"``, env, sizes, the actor's
    constructor arguments and weights, the normaliser and the dataset, which ``load_pretrained_actor`` reads.
    """

    def __init__(self, cfg: RunConfig, *, device: str | None = None) -> None:
        dataset = check_bc_config(cfg)
        self.cfg, cc, bc = cfg, cfg.control, cfg.control.bc
        self.device = dev = torch.device(device or cfg.train.device)
        check_env(cc.env)
        demos = load_demonstrations(dataset, env_id=cc.env)
        data = split_bc_data(demos, val_fraction=bc.val_fraction, seed=cfg.seed)
        self.obs_dim, self.action_dim = data.obs.shape[1], data.actions.shape[1]
        self.normalizer = fit_normalizer(data.obs).to(dev) if cc.normalize_obs else None
        self.obs = self._normalized(data.obs.to(dev))  # (M, S)
        self.actions = data.actions.to(dev)  # (M, A)
        self.val_obs, self.val_actions = self._normalized(data.val_obs.to(dev)), data.val_actions.to(dev)
        self.actor = FlowPolicy(
            self.obs_dim, self.action_dim, **actor_kwargs(cc), generator=torch_generator(cfg.seed, "init")
        ).to(dev)
        self.optimizer = torch.optim.AdamW(
            self.actor.parameters(), lr=bc.lr, betas=cfg.optim.betas, weight_decay=bc.weight_decay
        )
        self.generator = torch_generator(cfg.seed, "update", device=dev)  # batches and (tau, eps) draws
        val_gen = torch_generator(cfg.seed, "probe", device=dev)  # fixed held-out draws
        n_val = self.val_obs.shape[0]
        self.val_cfm_draws = draw_flow_noise(n_val, bc.cfm_draws, self.action_dim, generator=val_gen, device=dev)
        self.val_elbo_draws = draw_elbo_noise(
            n_val, max(bc.cfm_draws, 8), self.action_dim, generator=val_gen, device=dev
        )
        self.meta = {
            "kind": BC_KIND,
            "env": cc.env,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "normalize_obs": cc.normalize_obs,
            "dataset": {
                "path": str(demos.path),
                "dataset_id": demos.dataset_id,
                "pairs": int(demos.actions.shape[0]),
                "train_episodes": data.train_episodes,
                "val_episodes": data.val_episodes,
                "return_mean": float(demos.episode_returns.mean()),
            },
        }
        self.step = 0
        self.samples = 0

    def _normalized(self, obs: torch.Tensor) -> torch.Tensor:
        return (self.normalizer(obs) if self.normalizer is not None else obs).float()

    def train_step(self) -> dict[str, float]:
        """One CFM step on ``bc.batch_size`` pairs drawn with replacement."""
        bc = self.cfg.control.bc
        self.actor.train()
        rows = torch.randint(self.obs.shape[0], (bc.batch_size,), generator=self.generator, device=self.device)
        draws = draw_flow_noise(bc.batch_size, bc.cfm_draws, self.action_dim, generator=self.generator,
                                device=self.device)  # fmt: skip
        loss = bc_loss(self.actor, self.obs[rows], self.actions[rows], draws)
        metrics = {"loss": float(loss.detach()), "updates": 1.0, "skipped_updates": 1.0, "grad_norm": math.nan}
        if loss_is_finite(loss):
            loss.backward()
            applied, metrics["grad_norm"] = clip_and_step(
                self.optimizer, self.actor.parameters(), self.cfg.optim.max_grad_norm
            )
            metrics["skipped_updates"] = float(not applied)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.actor.eval()
        self.step += 1
        self.samples += bc.batch_size
        return metrics

    def evaluate(self) -> dict[str, float]:
        """``val/cfm_loss`` and ``val/elbo`` on the held-out episodes; the clone's ``eval/return`` in the env at
        ``bc.eval_every`` steps and at the last."""
        bc = self.cfg.control.bc
        out: dict[str, float] = {}
        if self.val_obs.shape[0] > 0:
            out.update(validation_metrics(self.actor, self.val_obs, self.val_actions, self.val_cfm_draws,
                                          self.val_elbo_draws))  # fmt: skip
        if self.step >= bc.steps or (bc.eval_every > 0 and self.step % bc.eval_every == 0):
            out.update(evaluate_actor(self.actor, self.normalizer, self.cfg.control.env, episodes=bc.eval_episodes,
                                      seed=self.cfg.seed, device=self.device))  # fmt: skip
        return out

    def drift_probe(self) -> dict[str, float]:
        """Cloning fits someone else's actions: there is no policy gradient to probe."""
        raise ValueError("behaviour cloning has no drift probe (drift.every must be 0)")

    def set_dipod_beta(self, beta: float) -> None:
        """Cloning has no DiPOD term."""
        raise ValueError("behaviour cloning has no DiPOD term (adaptive_beta must be unset)")

    def state_dict(self) -> dict[str, Any]:
        """A BC checkpoint: the clone (for ``load_pretrained_actor``) and what training needs to continue."""
        return {
            **self.meta,
            "actor": {"kwargs": actor_kwargs(self.cfg.control), "state": copy.deepcopy(self.actor.state_dict())},
            "normalizer": None if self.normalizer is None else copy.deepcopy(self.normalizer.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "step": self.step,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict[str, Any], *, restore_envs: bool = True) -> None:
        """Restore ``state_dict()`` (built from the same config and dataset)."""
        if state.get("kind") != BC_KIND:
            raise ValueError(f"not a BC trainer state (kind {state.get('kind')!r})")
        if state["dataset"]["pairs"] != self.meta["dataset"]["pairs"]:
            raise ValueError(
                f"{self.meta['dataset']['path']} now holds {self.meta['dataset']['pairs']} pairs; the run was "
                f"trained on {state['dataset']['pairs']}"
            )
        self.actor.load_state_dict(state["actor"]["state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step, self.samples = int(state["step"]), int(state["samples"])

    def close(self) -> None:
        """Nothing held open."""


# --------------------------------------------------------------------------- RL from the clone


@dataclass
class PretrainedActor:
    """A BC checkpoint's actor and observation normaliser, ready for an RL trainer."""

    actor: FlowPolicy
    normalizer: RunningNorm | None
    """None when the clone was trained on raw observations (control.normalize_obs = false)."""
    env: str
    path: Path
    """The checkpoint file read."""
    dataset: dict[str, Any]


def _resolve_bc_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    if path.is_file():
        return path, load_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"BC checkpoint {path} does not exist")
    for directory in (path / "checkpoints", path):
        found = latest_checkpoint(directory)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path} holds no checkpoint (looked in {path / 'checkpoints'} and {path})")


def load_pretrained_actor(
    path: str | Path,
    expected_obs_dim: int,
    expected_act_dim: int,
    *,
    expected_env: str | None = None,
    control: ControlConfig | None = None,
    device: torch.device | str = "cpu",
) -> PretrainedActor:
    """The actor and normaliser of a BC checkpoint (a file, or a directory with checkpoints/).

    Raises, naming the file and the mismatch, when the checkpoint is not a BC checkpoint, was trained in
    another env (``expected_env``), for other observation or action sizes, or (with ``control``) with an
    actor architecture that differs from the config's (``ARCHITECTURE_KEYS``) or another
    ``normalize_obs``. The sampler's step count is a sampling setting, so ``control.sampling_steps`` wins.
    """
    file, checkpoint = _resolve_bc_checkpoint(path)
    payload = checkpoint.get("trainer", checkpoint)  # a run directory's checkpoint holds the BC state as its trainer
    if payload.get("kind") != BC_KIND:
        raise CheckpointError(f"checkpoint {file} is not a BC checkpoint (kind {payload.get('kind')!r})")
    problems = []
    if expected_env is not None and payload["env"] != expected_env:
        problems.append(f"env {payload['env']!r}, config {expected_env!r}")
    if payload["obs_dim"] != expected_obs_dim:
        problems.append(f"observation size {payload['obs_dim']}, env {expected_obs_dim}")
    if payload["action_dim"] != expected_act_dim:
        problems.append(f"action size {payload['action_dim']}, env {expected_act_dim}")
    kwargs = dict(payload["actor"]["kwargs"])
    kwargs["hidden"] = tuple(kwargs["hidden"])
    if control is not None:
        wanted = actor_kwargs(control)
        for key in ARCHITECTURE_KEYS:
            kw = "hidden" if key == "actor_hidden" else key
            if kwargs[kw] != wanted[kw]:
                problems.append(f"control.{key} {kwargs[kw]!r}, config {wanted[kw]!r}")
        if payload["normalize_obs"] != control.normalize_obs:
            problems.append(f"control.normalize_obs {payload['normalize_obs']}, config {control.normalize_obs}")
        kwargs["sampling_steps"] = control.sampling_steps
    if problems:
        raise ValueError(f"BC checkpoint {file} does not fit this run: " + "; ".join(problems))
    actor = FlowPolicy(payload["obs_dim"], payload["action_dim"], **kwargs)
    actor.load_state_dict(payload["actor"]["state"])
    normalizer = None
    if payload["normalizer"] is not None:
        normalizer = RunningNorm(payload["obs_dim"])
        normalizer.load_state_dict(payload["normalizer"])
        normalizer.to(device)
    return PretrainedActor(
        actor=actor.to(device).eval(), normalizer=normalizer, env=payload["env"], path=file, dataset=payload["dataset"]
    )


def actor_policy_fn(
    actor: FlowPolicy | Any, normalizer: RunningNorm | None, *, generator: torch.Generator
) -> Callable[[np.ndarray], np.ndarray]:
    """obs (S,) -> action (A,) numpy callable for ``collect_demonstrations`` from a dipod actor (flow or Gaussian).

    Samples with ``generator`` (the policy's own noise, reproducible from its seed); actions are in env
    units and not clipped (the collector clips after adding its action noise).
    """
    device = generator.device

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)[None]  # (1, S)
        if normalizer is not None:
            o = normalizer(o)
        return actor.sample(o, generator)[0].cpu().numpy()

    return policy
