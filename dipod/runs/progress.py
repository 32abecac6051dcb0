"""Progress display of a run: a rich bar with step, reward and ETA, or nothing in quiet mode."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    """Context manager around a rich Progress; ``quiet`` turns every call into a no-op."""

    def __init__(self, total: int, *, done: int = 0, description: str = "train", quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self._total, self._done, self._description = total, done, description

    def __enter__(self) -> RunProgress:
        if not self.quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("reward {task.fields[reward]}{task.fields[flag]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self._description, total=self._total, completed=self._done, reward="-", flag=""
            )
        return self

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if self._progress is None:
            return
        reward = metrics.get("reward_mean")
        flag = {"flag": "  COLLAPSE ALARM"} if metrics.get("health/collapsed") == 1.0 else {}
        if reward is None:  # nothing new to show: keep the last value
            self._progress.update(self._task, completed=step, **flag)
            return
        text = f"{reward:+.3f}" if isinstance(reward, float) and math.isfinite(reward) else "-"
        self._progress.update(self._task, completed=step, reward=text, **flag)

    def log(self, message: str) -> None:
        """A line above the bar (always shown: warnings must reach quiet runs too)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
