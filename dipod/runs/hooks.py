"""Hooks of the run loop: what runs after every training step besides evaluation and checkpoints.

A hook sees the trainer and the step's metric row after evaluation; it may add keys to the row, act
on the trainer (adaptive beta) and ask the loop to stop. Its state goes into every checkpoint, so a
resumed run continues bit for bit. The loop builds the hooks a config asks for (``hooks_for``);
experiments pass more (extra logging, early stops) to ``run_training(..., hooks=[...])``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from dipod.config import AdaptiveBetaConfig, HealthConfig
from dipod.diagnostics.adaptive_beta import TwoSignalBeta
from dipod.diagnostics.drift import DriftMonitor
from dipod.diagnostics.health import CollapseAlarm, HealthSignals
from dipod.runs.config import RunConfig
from dipod.types import Trainer


class Hook(Protocol):
    """Something the loop calls after each step."""

    name: str
    """Key of its state in checkpoints (unique among a run's hooks)."""

    def after_step(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Act on the step just taken; may add metrics to ``row``."""
        ...

    def stop_reason(self) -> str | None:
        """Why the run should stop now (it stops after a checkpoint), or None to go on."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs to continue identically."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``."""
        ...

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` should say of this hook (empty: nothing)."""
        ...

    def on_resume(self, trainer: Trainer) -> None:
        """After ``load_state_dict`` on a resume: give the rebuilt trainer what the hook had changed in it."""
        ...


class StatelessHook:
    """Defaults for hooks that keep no state and never stop a run."""

    name = "hook"

    def after_step(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Nothing by default."""

    def stop_reason(self) -> str | None:
        """Never asks to stop."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No state to restore."""

    def summary(self) -> dict[str, Any]:
        """Nothing for the summary."""
        return {}

    def on_resume(self, trainer: Trainer) -> None:
        """Nothing to give back."""


class DriftProbe(StatelessHook):
    """Runs the trainer's drift probe every ``every`` steps (``DriftMonitor``), with its cost as ``drift/seconds``."""

    name = "drift"

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.monitor: DriftMonitor | None = None

    def after_step(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Add ``drift/*`` to the rows of due steps."""
        if self.monitor is None:
            self.monitor = DriftMonitor(trainer.drift_probe, self.every)
        row.update(self.monitor.maybe_probe(trainer.step))


def _number(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return math.nan if value is None else float(value)


class AdaptiveBeta(StatelessHook):
    """Adapts DiPOD's weight from each probe's gap and a collapse signal (``TwoSignalBeta``).

    Every row records the beta its step used (``dipod_beta``) and whether the collapse signal holds beta
    down (``dipod_beta_collapsing``); beta changes after steps with a probe.
    """

    name = "adaptive_beta"

    def __init__(self, settings: AdaptiveBetaConfig, beta: float) -> None:
        self.controller = TwoSignalBeta(settings, beta)

    def after_step(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Log the beta in force, then take this step's gap (if probed), token NLL and reward spread."""
        row.update(self.controller.metrics())
        before = self.controller.beta
        beta = self.controller.update(
            _number(row, "drift/gap"),
            token_nll=_number(row, "health/token_nll"),
            zero_std_ratio=_number(row, "health/zero_std_ratio"),
        )
        if beta != before:
            trainer.set_dipod_beta(beta)

    def state_dict(self) -> dict[str, Any]:
        """The controller's beta, entropy reference and collapse flag."""
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the controller; the trainer gets its beta back through ``restore``."""
        self.controller.load_state_dict(state)

    def on_resume(self, trainer: Trainer) -> None:
        """Give the rebuilt trainer the beta the run had reached."""
        trainer.set_dipod_beta(self.controller.beta)


class HealthWatch(StatelessHook):
    """The collapse alarm (``CollapseAlarm``) on the ``health/*`` signals a trainer reports.

    Adds the relative signals, ``health/alarms`` and ``health/collapsed`` to each row that has signals,
    puts the first collapse (step, signals) into ``summary.json``, and stops the run when ``stop`` is set.
    """

    name = "health"

    def __init__(self, settings: HealthConfig, *, stop: bool) -> None:
        self.alarm = CollapseAlarm(settings)
        self.stop = stop
        self.first_step: int | None = None
        self.flag = ""

    def after_step(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Feed the step's signals to the alarm (rows without them, e.g. control's, are left alone)."""
        signals = HealthSignals.from_metrics(row)
        if signals is None:
            return
        report = self.alarm.update(signals)
        row.update(report.metrics)
        if report.collapsed and self.first_step is None:
            self.first_step = trainer.step
        self.flag = report.describe()

    def stop_reason(self) -> str | None:
        """With ``train.stop_on_collapse``, the signals that fired."""
        if self.stop and self.first_step is not None:
            return f"collapse alarm ({', '.join(self.alarm.collapse_signals)}) at step {self.first_step}"
        return None

    def summary(self) -> dict[str, Any]:
        """Whether and when (training step) the run was flagged, and by which signals."""
        return {"collapsed": self.first_step is not None, "step": self.first_step,
                "signals": list(self.alarm.collapse_signals)}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The alarm's references and streaks, and the step of the first collapse."""
        return {"alarm": self.alarm.state_dict(), "first_step": self.first_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``."""
        self.alarm.load_state_dict(state["alarm"])
        self.first_step = state["first_step"]


def hooks_for(cfg: RunConfig) -> list[Hook]:
    """The hooks ``cfg`` asks for: the drift probe, the collapse alarm, then adaptive beta (which reads both)."""
    hooks: list[Hook] = []
    if cfg.drift.every > 0:
        hooks.append(DriftProbe(cfg.drift.every))
    if cfg.health.enabled:
        hooks.append(HealthWatch(cfg.health, stop=cfg.train.stop_on_collapse))
    if cfg.adaptive_beta is not None:
        hooks.append(AdaptiveBeta(cfg.adaptive_beta, cfg.objective.dipod_beta))
    return hooks
