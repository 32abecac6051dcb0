"""The run loop: train steps, logging, evaluation, drift probes, checkpoints, resume and stopping rules.

Everything that makes a run resumable bit for bit lives in the checkpoint: the trainer's
state_dict (model, optimiser, generators, normalisers, environments, step, samples), the global
random states, the resolved config, the byte offset of metrics.jsonl, the wall time so far and the
count of consecutive bad steps. A resume truncates metrics.jsonl to that offset, so the rows a
killed run wrote after its last checkpoint are written again, identically.

Under a multi-process launcher (``torchrun``, ``accelerate launch``) every process runs the loop, but
only rank 0 writes the run directory; the trainer's ``state_dict`` is still taken on every process,
since gathering the per-process random streams into it is a collective operation.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dipod.config import ConfigError, RunConfig, dump_config, validate_config
from dipod.runs.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)
from dipod.runs.metrics import MetricsFile, NullSink, TensorBoardSink, clean_value, read_metrics
from dipod.runs.progress import RunProgress
from dipod.runs.rng import global_rng_state, seed_globals, set_global_rng_state

TrainerFactory = Callable[[RunConfig], Any]


class BadStepsError(RuntimeError):
    """Too many consecutive steps without a finite update; the run stopped."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds a run and --resume was not given)."""


@dataclass
class RunResult:
    """How a run ended."""

    run_dir: Path
    status: str
    """completed | interrupted | stopped"""
    step: int
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def updates_per_step(cfg: RunConfig) -> int | None:
    """Optimiser updates a trainer attempts per step (when a trainer does not report ``updates``)."""
    if cfg.domain == "language" and cfg.language is not None:
        return cfg.language.num_iterations
    if cfg.domain == "control" and cfg.control is not None:
        epochs, minibatches = getattr(cfg.control, "update_epochs", None), getattr(cfg.control, "num_minibatches", None)
        return epochs * minibatches if epochs and minibatches else None
    return None


def is_bad_step(metrics: dict[str, Any], updates: int | None = None) -> bool:
    """A step that moved nothing: every one of its updates was skipped, or its loss is non-finite.

    Trainers average ``loss`` and ``grad_norm`` over all inner updates, skipped ones included, so
    with the number of attempted updates known (``metrics["updates"]`` or ``updates``) the test is
    on the count of skipped updates; without it a non-finite loss, or a skipped update with a
    non-finite mean gradient norm, counts as bad.
    """
    loss_finite = _finite(metrics.get("loss", 0.0))
    skipped = metrics.get("skipped_updates") or 0
    updates = metrics.get("updates") or updates
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


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["train"].pop("steps")  # extending a finished run is allowed
    return data


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


def process_rank() -> int:
    """This process's rank as set by torchrun or accelerate launch; 0 when not launched that way."""
    return int(os.environ.get("RANK", "0"))


def _silent(message: str) -> None:
    pass


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


class _InterruptFlag:
    """SIGINT sets a flag so the loop finishes its step and checkpoints; a second SIGINT aborts at once."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.raised = False
        self._say = say
        self._previous: Any = None

    def __enter__(self) -> _InterruptFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        self._say("interrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort without one)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------- the run


def prepare_run_dir(
    cfg: RunConfig, run_dir: Path, *, resume: bool, say: Callable[[str], None], writer: bool = True
) -> dict | None:
    """Check the directory, write its config.yaml, and return the checkpoint payload to resume from
    (None for a fresh start).

    ``writer``: this process writes the run directory (rank 0). Only it refuses a directory that holds
    a run: the other processes would race with its first writes.
    """
    payload = _checkpoint_to_resume(cfg, run_dir, resume=resume, say=say, check_empty=writer)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    return payload


def _checkpoint_to_resume(
    cfg: RunConfig, run_dir: Path, *, resume: bool, say: Callable[[str], None], check_empty: bool
) -> dict | None:
    ckpt_dir = run_dir / "checkpoints"
    if not resume:
        if check_empty and ((run_dir / "metrics.jsonl").exists() or list_checkpoints(ckpt_dir)):
            raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        return None
    found = latest_checkpoint(ckpt_dir, warn=say)
    if found is None:
        say(f"no checkpoint in {ckpt_dir}: starting from step 0")
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


def _summary(cfg: RunConfig, status: str, trainer: Any, time_s: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
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
        "final": {k: v for k, v in last.items() if not k.startswith(("eval/", "drift/"))},
        "eval": {k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("eval/")},
    }


def _measure(trainer: Any, cfg: RunConfig, row: dict[str, Any], *, last: bool, say: Callable[[str], None]) -> bool:
    """Add evaluation and drift-probe results due at this step to ``row``; whether any was added."""
    step = trainer.step
    evaluated = last or _due(step, cfg.train.eval_every)
    if evaluated:
        row.update(trainer.evaluate())
    probed = _due(step, cfg.drift.every)
    if probed:
        if hasattr(trainer, "drift_probe"):
            row.update(trainer.drift_probe())
        elif step == cfg.drift.every:
            say(f"warning: {type(trainer).__name__} has no drift_probe(); drift.every is ignored")
    return evaluated or probed


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=clean_value) + "\n")
    tmp.replace(path)


def _build_trainer(cfg: RunConfig, trainer_factory: TrainerFactory, payload: dict | None, run_dir: Path) -> Any:
    """The trainer, with the checkpoint's state when resuming; failures become named errors."""
    try:
        device = torch.device(cfg.train.device)
    except RuntimeError as exc:
        raise ConfigError(f"train.device = {cfg.train.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {cfg.train.device!r}, but torch sees no CUDA device on this machine")
    try:
        trainer = trainer_factory(cfg)
    except (ValueError, OSError) as exc:  # a model path that is not there, a setting the trainer cannot honour
        raise ConfigError(f"{cfg.name}: cannot build the trainer: {exc}") from exc
    if payload is not None:
        try:
            trainer.load_state_dict(payload["trainer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            where = run_dir / "checkpoints"
            raise CheckpointError(f"cannot resume from the last checkpoint in {where}: {exc}") from exc
    return trainer


def run_training(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    trainer_factory: TrainerFactory,
    resume: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (DESIGN §5), resuming from its last checkpoint when asked.

    Raises RunDirError, ConfigError (also when the trainer cannot be built) or CheckpointError (also
    when the trainer rejects the checkpoint's state) before any work, and BadStepsError when
    ``cfg.train.max_bad_steps`` consecutive steps produced no finite update.
    """
    run_dir = Path(run_dir)
    writer = process_rank() == 0
    progress = RunProgress(cfg.train.steps, description=cfg.name, quiet=quiet or not writer)
    say = progress.log if writer else _silent
    payload = prepare_run_dir(cfg, run_dir, resume=resume, say=say, writer=writer)
    seed_globals(cfg.seed)
    trainer = _build_trainer(cfg, trainer_factory, payload, run_dir)
    time_before, bad_steps, offset = 0.0, 0, 0
    if payload is not None:
        set_global_rng_state(payload["rng"])
        time_before, bad_steps, offset = payload["time_s"], payload["bad_steps"], payload["metrics_offset"]

    metrics = MetricsFile(run_dir / "metrics.jsonl", truncate_to=offset) if writer else NullSink()
    board = TensorBoardSink(run_dir / "tb", purge_step=trainer.step + 1) if writer else NullSink()
    rows = read_metrics(run_dir / "metrics.jsonl")
    started = time.monotonic()
    status = "completed"
    updates = updates_per_step(cfg)

    def elapsed() -> float:
        return time_before + time.monotonic() - started

    def checkpoint() -> None:
        state = trainer.state_dict()  # on every process: it may gather from all of them
        if not writer:
            return
        bad = nonfinite_tensors(state)
        if bad:
            say(f"warning: step {trainer.step} has non-finite values in {', '.join(bad[:5])}: not checkpointed")
            return
        board.flush()
        save_checkpoint(
            checkpoint_path(run_dir / "checkpoints", trainer.step),
            {
                "trainer": state,
                "rng": global_rng_state(),
                "config": cfg.model_dump(mode="json"),
                "metrics_offset": metrics.sync(),
                "time_s": elapsed(),
                "bad_steps": bad_steps,
                "step": trainer.step,
                "samples": trainer.samples,
            },
        )
        prune_checkpoints(run_dir / "checkpoints")
        _write_json(run_dir / "summary.json", _summary(cfg, "running", trainer, elapsed(), rows))

    try:
        with progress, _InterruptFlag(say) as interrupt:
            progress.update(trainer.step, rows[-1] if rows else {})
            while trainer.step < cfg.train.steps:
                step_metrics = trainer.train_step()
                step = trainer.step
                last = step >= cfg.train.steps
                row: dict[str, Any] = {"step": step, "samples": trainer.samples, "time_s": 0.0, **step_metrics}
                bad_steps = bad_steps + 1 if is_bad_step(step_metrics, updates) else 0
                measured = _measure(trainer, cfg, row, last=last, say=say)
                row["time_s"] = elapsed()
                if measured or last or _due(step, cfg.train.log_every):
                    row = {k: clean_value(v) for k, v in row.items()}
                    metrics.write(row)
                    board.write(row)
                    rows.append(row)
                progress.update(step, row)
                if bad_steps >= cfg.train.max_bad_steps:
                    status = "stopped"
                    raise BadStepsError(
                        f"stopped at step {step}: {bad_steps} consecutive steps had a non-finite loss or had every "
                        f"update skipped for non-finite gradients (train.max_bad_steps = {cfg.train.max_bad_steps}). "
                        "Try a lower optim.lr or a smaller optim.max_grad_norm; the last good checkpoint is in "
                        f"{run_dir / 'checkpoints'}"
                    )
                if interrupt.raised:
                    status = "interrupted"
                    checkpoint()
                    say(f"interrupted after step {step}; continue with --resume")
                    break
                if last or _due(step, cfg.train.checkpoint_every):
                    checkpoint()
    except BaseException:
        if status == "completed":
            status = "failed"
        raise
    finally:
        metrics.close()
        board.close()
        if hasattr(trainer, "close"):  # vector envs with worker processes
            trainer.close()
        summary = _summary(cfg, status, trainer, elapsed(), rows)
        if writer:
            _write_json(run_dir / "summary.json", summary)
    _wait_for_all_processes()  # no process moves on (e.g. to a resume) before rank 0 has written
    return RunResult(run_dir, status, trainer.step, summary)


def _wait_for_all_processes() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


__all__ = ["BadStepsError", "CheckpointError", "RunDirError", "RunResult", "is_bad_step", "run_training"]
