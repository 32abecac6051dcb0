"""Hooks of the run loop: what runs after every training step besides evaluation and checkpoints.

A hook sees the trainer and the step's metric row after evaluation; it may add keys to the row, act
on the trainer (adaptive beta) and ask the loop to stop. Its state goes into every checkpoint, so a
resumed run continues bit for bit. The loop builds the hooks a config asks for (``hooks_for``);
experiments pass more (extra logging, early stops) to ``run_training(..., hooks=[...])``.
"""

from __future__ import annotations

from typing import Any, Protocol

from dipod.diagnostics.adaptive_beta import adapt_beta
from dipod.diagnostics.drift import DriftMonitor
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


class AdaptiveBeta(StatelessHook):
    """Adapts DiPOD's weight from each probe's gap (``adapt_beta``) and logs it as ``dipod_beta``."""

    name = "adaptive_beta"

    def __init__(self, settings: Any, beta: float) -> None:
        self.settings = settings
        self.beta = beta

    def after_step(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After a probe, set the next beta; every row records the beta its step used."""
        row["dipod_beta"] = self.beta
        if "drift/gap" in row:
            self.beta = adapt_beta(self.beta, float(row["drift/gap"]), self.settings)
            trainer.set_dipod_beta(self.beta)

    def state_dict(self) -> dict[str, Any]:
        """The current beta."""
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore beta; the trainer gets it back through ``restore``."""
        self.beta = float(state["beta"])

    def restore(self, trainer: Trainer) -> None:
        """Give a rebuilt trainer the beta the run had reached."""
        trainer.set_dipod_beta(self.beta)


def hooks_for(cfg: RunConfig) -> list[Hook]:
    """The hooks ``cfg`` asks for: the drift probe, then adaptive beta (which reads the probe's gap)."""
    hooks: list[Hook] = []
    if cfg.drift.every > 0:
        hooks.append(DriftProbe(cfg.drift.every))
    if cfg.adaptive_beta is not None:
        hooks.append(AdaptiveBeta(cfg.adaptive_beta, cfg.objective.dipod_beta))
    return hooks
