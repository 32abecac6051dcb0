"""The run loop: the one place that trains. Steps, evaluation, hooks, logging, checkpoints, resume, stopping.

Everything that makes a run resumable bit for bit lives in the checkpoint: the trainer's state_dict
(model, optimiser, generators, normalisers, environments, step, samples), the hooks' states, the
global random states, the resolved config, the byte offset of metrics.jsonl, the wall time so far and
the count of consecutive bad steps. A resume truncates metrics.jsonl to that offset, so the rows a
killed run wrote after its last checkpoint are written again, identically.

Under a multi-process launcher (``torchrun``, ``accelerate launch``) every process runs the loop, but
only rank 0 writes the run directory; the trainer's ``state_dict`` is still taken on every process,
since gathering the per-process random streams into it is a collective operation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dipod.checkpoints import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)
from dipod.config import ConfigError, dump_config
from dipod.runs.config import RunConfig, validate_config
from dipod.runs.hooks import Hook, hooks_for
from dipod.runs.interrupt import InterruptFlag
from dipod.runs.metrics import MetricsFile, NullSink, Sinks, TensorBoardSink, WandbSink, clean_value, read_metrics
from dipod.runs.progress import RunProgress
from dipod.runs.rng import global_rng_state, seed_globals, set_global_rng_state
from dipod.types import Trainer

TrainerFactory = Callable[[RunConfig], Trainer]
Resume = Literal["never", "always", "auto"]
"""never: the directory must hold no run; always: it must hold one to continue; auto: continue if it does."""


class BadStepsError(RuntimeError):
    """Too many consecutive steps without a finite update; the run stopped."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it holds a run and resuming was not asked, or the reverse)."""


@dataclass
class RunResult:
    """How a run ended."""

    run_dir: Path
    status: str
    """completed | interrupted | stopped (a hook or the bad-step rule) | failed"""
    step: int
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- small pure helpers


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def is_bad_step(metrics: dict[str, Any]) -> bool:
    """A step that moved nothing: every one of its ``updates`` was skipped, or its loss is non-finite.

    Trainers average ``loss`` and ``grad_norm`` over all inner updates, skipped ones included; without
    an ``updates`` count a non-finite loss, or a skipped update with a non-finite mean gradient norm,
    counts as bad.
    """
    loss_finite = _finite(metrics.get("loss", 0.0))
    skipped = metrics.get("skipped_updates") or 0
    updates = metrics.get("updates")
    if updates:
        return skipped >= updates or (skipped == 0 and not loss_finite)
    if not loss_finite:
        return True
    return skipped > 0 and not _finite(metrics.get("grad_norm", math.nan))


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Dotted names of floating tensors and arrays in a (nested) state dict that hold NaN or inf."""
    bad: list[str] = []
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            bad.append(prefix or "<tensor>")
    elif isinstance(state, np.ndarray):
        if np.issubdtype(state.dtype, np.floating) and not np.isfinite(state).all():
            bad.append(prefix or "<array>")
    elif isinstance(state, dict):
        for key, value in state.items():
            bad += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, list | tuple):
        for i, value in enumerate(state):
            bad += nonfinite_tensors(value, f"{prefix}.{i}" if prefix else str(i))
    return bad


def _config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _config_differences(va, vb, dotted + ".")
        elif va != vb:
            diffs.append(f"{dotted}: checkpoint {va!r}, now {vb!r}")
    return diffs


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["train"].pop("steps")  # extending a finished run is allowed, whichever section sets its length:
    for section, lengths in (("language", "sft"), ("control", "bc")):  # SFT and BC runs take theirs from there
        if isinstance(data.get(section), dict):
            data[section][lengths].pop("steps", None)
    return data


def process_rank() -> int:
    """This process's rank as set by torchrun or accelerate launch; 0 when not launched that way."""
    return int(os.environ.get("RANK", "0"))


def _silent(message: str) -> None:
    pass


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=clean_value) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------- run directory and trainer


def prepare_run_dir(
    cfg: RunConfig, run_dir: Path, *, resume: Resume, say: Callable[[str], None], writer: bool = True
) -> dict | None:
    """Check the directory, write its config.yaml, and return the checkpoint payload to resume from
    (None for a fresh start).

    ``writer``: this process writes the run directory (rank 0). Only it refuses a directory that holds
    a run when not resuming: the other processes would race with its first writes.
    """
    payload = _checkpoint_to_resume(cfg, run_dir, resume=resume, say=say, check_empty=writer)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    return payload


def _checkpoint_to_resume(
    cfg: RunConfig, run_dir: Path, *, resume: Resume, say: Callable[[str], None], check_empty: bool
) -> dict | None:
    ckpt_dir = run_dir / "checkpoints"
    holds_run = (run_dir / "metrics.jsonl").exists() or bool(list_checkpoints(ckpt_dir))
    if resume == "never":
        if check_empty and holds_run:
            raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        return None
    found = latest_checkpoint(ckpt_dir, warn=say)
    if found is None:
        if resume == "always" and not holds_run:
            raise RunDirError(
                f"--resume: {run_dir} holds no checkpoint to continue (looked in {ckpt_dir}); drop --resume to "
                "start a new run there, or pass --auto-resume to continue a run if there is one and start one if not"
            )
        if holds_run:  # a run killed before its first checkpoint
            say(f"no checkpoint in {ckpt_dir}: starting from step 0 (its rows are written again)")
        return None
    path, payload = found
    saved = validate_config(payload["config"], source=f"checkpoint {path}")
    diffs = _config_differences(_comparable(saved), _comparable(cfg))
    if diffs:
        raise ConfigError(
            f"the config differs from the one {run_dir} was started with (only train.steps may change on resume):\n  "
            + "\n  ".join(diffs)
        )
    say(f"resuming from {path} (step {payload['step']})")
    return payload


def open_trainer(
    cfg: RunConfig, factory: TrainerFactory, payload: dict | None, where: Path, *, restore_envs: bool = True
) -> Trainer:
    """The trainer for ``cfg``, with a checkpoint's state when given; failures become named errors.

    Raises ConfigError (bad device, or a setting the trainer cannot honour) or CheckpointError (a state
    the trainer rejects), before any work.
    """
    try:
        device = torch.device(cfg.train.device)
    except RuntimeError as exc:
        raise ConfigError(f"train.device = {cfg.train.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {cfg.train.device!r}, but torch sees no CUDA device on this machine")
    try:
        trainer = factory(cfg)
    except (ValueError, OSError) as exc:  # a model path that is not there, a setting the trainer cannot honour
        raise ConfigError(f"{cfg.name}: cannot build the trainer: {exc}") from exc
    if payload is not None:
        try:
            trainer.load_state_dict(payload["trainer"], restore_envs=restore_envs)
        except (ValueError, KeyError, RuntimeError) as exc:
            trainer.close()
            raise CheckpointError(f"cannot resume from the checkpoint in {where}: {exc}") from exc
    return trainer


def _summary(
    cfg: RunConfig, status: str, trainer: Trainer, time_s: float, rows: list[dict[str, Any]], hooks: Sequence[Hook]
) -> dict:
    rewards = [r["reward_mean"] for r in rows if _finite(r.get("reward_mean"))]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    last = rows[-1] if rows else {}
    return {
        "name": cfg.name,
        "domain": cfg.domain,
        "objective": cfg.objective.name,
        "dipod_beta": cfg.objective.dipod_beta,
        "seed": cfg.seed,
        "status": status,
        "step": trainer.step,
        "steps": cfg.train.steps,
        "samples": trainer.samples,
        "time_s": time_s,
        "final_reward": rewards[-1] if rewards else None,
        "best_reward": max(rewards) if rewards else None,
        "final": {k: v for k, v in last.items() if not k.startswith(("eval/", "drift/", "health/"))},
        "eval": {k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("eval/")},
        **{hook.name: summary for hook in hooks if (summary := hook.summary())},
    }


# --------------------------------------------------------------------------- the run


class _Run:
    """One run's mutable state, so each part of ``run_training`` is a short method."""

    def __init__(self, cfg: RunConfig, run_dir: Path, trainer: Trainer, hooks: list[Hook], payload: dict | None,
                 writer: bool, say: Callable[[str], None]) -> None:  # fmt: skip
        self.cfg, self.run_dir, self.trainer, self.hooks = cfg, run_dir, trainer, hooks
        self.writer, self.say = writer, say
        self.time_before, self.bad_steps, offset = 0.0, 0, 0
        if payload is not None:
            self.time_before, self.bad_steps, offset = (
                payload["time_s"],
                payload["bad_steps"],
                payload["metrics_offset"],
            )
        self.metrics = MetricsFile(run_dir / "metrics.jsonl", truncate_to=offset) if writer else NullSink()
        self.sinks = Sinks(self._sinks(resumed=payload is not None) if writer else [])
        self.rows = read_metrics(run_dir / "metrics.jsonl")
        self.started = time.monotonic()
        self.status = "completed"

    def _sinks(self, *, resumed: bool) -> list[Any]:
        sinks: list[Any] = []
        if "tensorboard" in self.cfg.train.report_to:
            sinks.append(TensorBoardSink(self.run_dir / "tb", purge_step=self.trainer.step + 1))
        if "wandb" in self.cfg.train.report_to:
            sinks.append(
                WandbSink(self.run_dir, name=self.cfg.name, config=self.cfg.model_dump(mode="json"), resume=resumed)
            )
        return sinks

    def elapsed(self) -> float:
        return self.time_before + time.monotonic() - self.started

    def step(self) -> tuple[dict[str, Any], bool]:
        """One training step with its evaluation and hooks; the row, and whether it is written."""
        trainer, train = self.trainer, self.cfg.train
        metrics = trainer.train_step()
        last = trainer.step >= train.steps
        row: dict[str, Any] = {"step": trainer.step, "samples": trainer.samples, "time_s": 0.0, **metrics}
        self.bad_steps = self.bad_steps + 1 if is_bad_step(metrics) else 0
        evaluated = last or _due(trainer.step, train.eval_every)
        if evaluated:
            row.update(trainer.evaluate())
        before = set(row)
        for hook in self.hooks:
            hook.after_step(trainer, row)
        row["time_s"] = self.elapsed()
        measured = evaluated or any(k.startswith("drift/") for k in set(row) - before)
        return row, measured or last or _due(trainer.step, train.log_every)

    def log(self, row: dict[str, Any]) -> None:
        row = {k: clean_value(v) for k, v in row.items()}
        self.metrics.write(row)
        self.sinks.write(row)
        self.rows.append(row)

    def checkpoint(self) -> None:
        state = self.trainer.state_dict()  # on every process: it may gather from all of them
        if not self.writer:
            return
        bad = nonfinite_tensors(state)
        if bad:
            self.say(
                f"warning: step {self.trainer.step} has non-finite values in {', '.join(bad[:5])}: not checkpointed"
            )
            return
        self.sinks.flush()
        ckpt_dir = self.run_dir / "checkpoints"
        save_checkpoint(
            checkpoint_path(ckpt_dir, self.trainer.step),
            {
                "trainer": state,
                "hooks": {hook.name: hook.state_dict() for hook in self.hooks},
                "rng": global_rng_state(),
                "config": self.cfg.model_dump(mode="json"),
                "metrics_offset": self.metrics.sync(),
                "time_s": self.elapsed(),
                "bad_steps": self.bad_steps,
                "step": self.trainer.step,
                "samples": self.trainer.samples,
            },
        )
        prune_checkpoints(ckpt_dir, keep=self.cfg.train.keep_checkpoints)
        self.write_summary("running")

    def stop_reason(self) -> str | None:
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            raise BadStepsError(
                f"stopped at step {self.trainer.step}: {self.bad_steps} consecutive steps had a non-finite loss or had "
                f"every update skipped for non-finite gradients (train.max_bad_steps = {self.cfg.train.max_bad_steps})."
                f" Try a lower optim.lr or a smaller optim.max_grad_norm; the last good checkpoint is in "
                f"{self.run_dir / 'checkpoints'}"
            )
        reasons = [reason for hook in self.hooks if (reason := hook.stop_reason())]
        return "; ".join(reasons) or None

    def write_summary(self, status: str) -> dict[str, Any]:
        summary = _summary(self.cfg, status, self.trainer, self.elapsed(), self.rows, self.hooks)
        if self.writer:
            _write_json(self.run_dir / "summary.json", summary)
        return summary

    def close(self) -> dict[str, Any]:
        self.metrics.close()
        self.sinks.close()
        self.trainer.close()
        return self.write_summary(self.status)


def _restore_hooks(hooks: list[Hook], payload: dict | None, trainer: Trainer) -> None:
    if payload is None:
        return
    states = payload.get("hooks", {})
    for hook in hooks:
        if hook.name in states:
            hook.load_state_dict(states[hook.name])
            hook.on_resume(trainer)


def run_training(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    trainer_factory: TrainerFactory,
    resume: Resume | bool = "never",
    quiet: bool = False,
    hooks: Sequence[Hook] = (),
) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (metrics.jsonl, summary.json, checkpoints/, tb/), resuming when asked.

    ``hooks`` run after the ones the config asks for (drift probe, collapse alarm, adaptive beta). Raises RunDirError,
    ConfigError (also when the trainer cannot be built) or CheckpointError (also when the trainer
    rejects the checkpoint's state) before any work, and BadStepsError when ``train.max_bad_steps``
    consecutive steps produced no finite update.
    """
    if isinstance(resume, bool):
        resume = "always" if resume else "never"
    run_dir = Path(run_dir)
    writer = process_rank() == 0
    progress = RunProgress(cfg.train.steps, description=cfg.name, quiet=quiet or not writer)
    say = progress.log if writer else _silent
    payload = prepare_run_dir(cfg, run_dir, resume=resume, say=say, writer=writer)
    seed_globals(cfg.seed)
    trainer = open_trainer(cfg, trainer_factory, payload, run_dir / "checkpoints")
    all_hooks = [*hooks_for(cfg), *hooks]
    _restore_hooks(all_hooks, payload, trainer)
    if payload is not None:
        set_global_rng_state(payload["rng"])
    run = _Run(cfg, run_dir, trainer, all_hooks, payload, writer, say)
    try:
        with progress, InterruptFlag(say) as interrupt:
            progress.update(trainer.step, run.rows[-1] if run.rows else {})
            _train(run, progress, interrupt)
    except BaseException as exc:
        if run.status == "completed":
            run.status = "stopped" if isinstance(exc, BadStepsError) else "failed"
        raise
    finally:
        summary = run.close()
    _wait_for_all_processes()  # no process moves on (e.g. to a resume) before rank 0 has written
    return RunResult(run_dir, run.status, trainer.step, summary)


def _train(run: _Run, progress: RunProgress, interrupt: InterruptFlag) -> None:
    """Steps until the configured count, a stop reason or an interrupt; checkpoints on schedule and at the end."""
    trainer, train = run.trainer, run.cfg.train
    if train.eval_at_start and trainer.step == 0 and not run.rows:
        run.log({"step": 0, "samples": trainer.samples, **trainer.evaluate(), "time_s": run.elapsed()})
    while trainer.step < train.steps:
        row, written = run.step()
        if written:
            run.log(row)
        progress.update(trainer.step, row)
        reason = run.stop_reason()
        if reason or interrupt.raised:
            run.status = "stopped" if reason else "interrupted"
            run.checkpoint()
            run.say(f"stopped after step {trainer.step}: {reason}" if reason else
                    f"interrupted after step {trainer.step}; continue with --resume")  # fmt: skip
            return
        if trainer.step >= train.steps or _due(trainer.step, train.checkpoint_every):
            run.checkpoint()


def _wait_for_all_processes() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


__all__ = [
    "BadStepsError",
    "CheckpointError",
    "RunDirError",
    "RunResult",
    "is_bad_step",
    "open_trainer",
    "run_training",
]
