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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dipod.bounds.flow import FlowDraws, draw_elbo_noise, draw_flow_noise
from dipod.checkpoints import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from dipod.control.config import ControlConfig
from dipod.control.config import ControlRunConfig as RunConfig
from dipod.control.demos import Demonstrations, load_demonstrations, split_episodes
from dipod.control.envs import check_env, env_seeds, make_vector_env
from dipod.control.normalizer import RunningNorm
from dipod.control.policy import FlowPolicy
from dipod.optim import clip_and_step, loss_is_finite

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


@dataclass
class BCResult:
    """What ``train_bc`` returns."""

    actor: FlowPolicy
    normalizer: RunningNorm | None
    history: list[dict[str, float]]
    checkpoint: Path
    summary: dict[str, Any]


def _check_config(cfg: RunConfig) -> tuple[ControlConfig, str]:
    cc = cfg.control
    if cc is None or cfg.domain != "control":
        raise ValueError("behaviour cloning needs a control config (domain: control)")
    if cc.policy != "flow":
        raise ValueError(f"behaviour cloning trains flow policies; control.policy = {cc.policy!r}")
    if cc.bc.dataset is None:
        raise ValueError("control.bc.dataset is not set: give a Minari dataset path or id")
    if cc.env == "bandit":
        raise ValueError("control.env = 'bandit' has no demonstrations; behaviour cloning needs a gymnasium env")
    return cc, cc.bc.dataset


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["control"]["bc"].pop("steps")  # extending a finished clone is allowed
    return data


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    tmp = out / "bc_history.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    tmp.replace(out / "bc_history.jsonl")


def _resume_state(cfg: RunConfig, ckpt_dir: Path, resume: bool) -> dict[str, Any] | None:
    if not list_checkpoints(ckpt_dir):
        return None
    if not resume:
        raise FileExistsError(f"{ckpt_dir} already holds a BC run; resume it or choose another output directory")
    found = latest_checkpoint(ckpt_dir)
    assert found is not None
    path, payload = found
    if payload.get("kind") != BC_KIND:
        raise CheckpointError(f"checkpoint {path} is not a BC checkpoint")
    diffs = _differences(_comparable(RunConfig.model_validate(payload["config"])), _comparable(cfg))
    if diffs:
        raise ValueError(
            f"the config differs from the one {path} was trained with (only control.bc.steps may change on resume):"
            "\n  " + "\n  ".join(diffs)
        )
    return payload


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: checkpoint X, now Y`` for every dotted key whose value differs."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs


def train_bc(
    cfg: RunConfig,
    *,
    out_dir: str | Path,
    device: str | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    resume: bool = False,
) -> BCResult:
    """Clone ``control.bc.dataset`` into a flow policy; checkpoints in ``out_dir/checkpoints``.

    Checks before any work: the env, the dataset (exists, not empty, shapes match the env). Each step
    draws a batch of training pairs and ``control.bc.cfm_draws`` (tau, eps) per pair from one seeded
    generator, so ``resume=True`` continues bit for bit from the newest checkpoint. History rows (every
    ``train.log_every`` steps and at validation/evaluation steps) hold ``step``, ``samples``, ``loss``,
    ``grad_norm``, ``time_s`` and ``val/*`` / ``eval/*``; ``out_dir/bc_history.jsonl`` and
    ``out_dir/bc_summary.json`` (with the training throughput ``train_samples_per_s``) are written too.
    """
    cc, source = _check_config(cfg)
    bc = cc.bc
    dev = torch.device(device or cfg.train.device)
    check_env(cc.env)
    demos = load_demonstrations(source, env_id=cc.env)
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    payload = _resume_state(cfg, ckpt_dir, resume)
    data = split_bc_data(demos, val_fraction=bc.val_fraction, seed=cfg.seed)
    if payload is not None and payload["dataset"]["pairs"] != int(demos.actions.shape[0]):
        raise ValueError(
            f"{demos.path} now holds {demos.actions.shape[0]} pairs; the run in {out} was trained on "
            f"{payload['dataset']['pairs']}"
        )
    obs_dim, action_dim = data.obs.shape[1], data.actions.shape[1]

    normalizer = fit_normalizer(data.obs).to(dev) if cc.normalize_obs else None
    obs = (normalizer(data.obs.to(dev)) if normalizer is not None else data.obs.to(dev)).float()  # (M, S)
    actions = data.actions.to(dev)
    val_obs = data.val_obs.to(dev)
    val_obs = normalizer(val_obs) if normalizer is not None else val_obs  # (M_val, S)
    val_actions = data.val_actions.to(dev)

    init_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 4)
    actor = FlowPolicy(obs_dim, action_dim, **actor_kwargs(cc), generator=init_gen).to(dev)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=bc.lr, betas=cfg.optim.betas, weight_decay=bc.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + 11)  # batches and (tau, eps) draws
    val_gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + 12)  # fixed held-out draws
    n_val = val_obs.shape[0]
    val_cfm_draws = draw_flow_noise(n_val, bc.cfm_draws, action_dim, generator=val_gen, device=dev)
    val_elbo_draws = draw_elbo_noise(n_val, max(bc.cfm_draws, 8), action_dim, generator=val_gen, device=dev)

    step, history, train_time = 0, [], 0.0
    if payload is not None:
        state = payload["trainer"]
        actor.load_state_dict(payload["actor"]["state"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, history, train_time = int(state["step"]), list(state["history"]), float(state["train_time_s"])

    meta = {
        "kind": BC_KIND,
        "env": cc.env,
        "obs_dim": obs_dim,
        "action_dim": action_dim,
        "normalize_obs": cc.normalize_obs,
        "dataset": {
            "path": str(demos.path),
            "dataset_id": demos.dataset_id,
            "pairs": int(demos.actions.shape[0]),
            "train_episodes": data.train_episodes,
            "val_episodes": data.val_episodes,
            "return_mean": float(demos.episode_returns.mean()),
        },
        "config": cfg.model_dump(mode="json"),
    }

    def checkpoint() -> Path:
        path = save_checkpoint(
            checkpoint_path(ckpt_dir, step),
            {
                **meta,
                "actor": {"kwargs": actor_kwargs(cc), "state": actor.state_dict()},
                "normalizer": None if normalizer is None else normalizer.state_dict(),
                "trainer": {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "generator": gen.get_state(),
                    "history": history,
                    "train_time_s": train_time,
                },
            },
        )
        prune_checkpoints(ckpt_dir)
        _write_history(out, history)
        return path

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter() - (history[-1]["time_s"] if history else 0.0)
    last_path = checkpoint_path(ckpt_dir, step)
    while step < bc.steps:
        actor.train()
        tick = time.perf_counter()
        rows = torch.randint(obs.shape[0], (bc.batch_size,), generator=gen, device=dev)  # (B,)
        draws = draw_flow_noise(bc.batch_size, bc.cfm_draws, action_dim, generator=gen, device=dev)
        loss = bc_loss(actor, obs[rows], actions[rows], draws)
        grad_norm = float("nan")
        if loss_is_finite(loss):
            loss.backward()
            _, grad_norm = clip_and_step(optimizer, actor.parameters(), cfg.optim.max_grad_norm)
        else:
            optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - tick
        step += 1
        last = step == bc.steps
        row: dict[str, float] = {"step": step, "samples": step * bc.batch_size, "loss": float(loss.detach())}
        row["grad_norm"] = grad_norm
        actor.eval()
        validate = n_val > 0 and (last or (bc.val_every > 0 and step % bc.val_every == 0))
        evaluate = last or (bc.eval_every > 0 and step % bc.eval_every == 0)
        if validate:
            row.update(validation_metrics(actor, val_obs, val_actions, val_cfm_draws, val_elbo_draws))
        if evaluate:
            row.update(evaluate_actor(actor, normalizer, cc.env, episodes=bc.eval_episodes, seed=cfg.seed, device=dev))
        if last or validate or evaluate or step % cfg.train.log_every == 0:
            row["time_s"] = time.perf_counter() - start
            history.append(row)
            if log is not None:
                log(row)
        if last or step % bc.checkpoint_every == 0:
            last_path = checkpoint()

    summary = _summary(history, meta, train_time, step * bc.batch_size, last_path)
    tmp = out / "bc_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "bc_summary.json")
    actor.eval()
    return BCResult(actor=actor, normalizer=normalizer, history=history, checkpoint=last_path, summary=summary)


def _summary(history: list[dict], meta: dict, train_time: float, samples: int, path: Path) -> dict[str, Any]:
    latest: dict[str, float] = {}
    for row in history:
        latest.update({k: v for k, v in row.items() if k.startswith(("val/", "eval/"))})
    return {
        "env": meta["env"],
        "dataset": meta["dataset"]["path"],
        "demo_return_mean": meta["dataset"]["return_mean"],
        "steps": history[-1]["step"] if history else 0,
        "samples": samples,
        "train_time_s": train_time,
        "train_samples_per_s": samples / train_time if train_time > 0 else float("nan"),
        "checkpoint": str(path),
        **latest,
    }


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
    file, payload = _resolve_bc_checkpoint(path)
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
