"""Metric sinks of a run directory: ``metrics.jsonl`` (with byte offsets for resume) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def clean_value(value: Any) -> Any:
    """A JSON-safe scalar: floats stay floats, non-finite floats become null, tensors become numbers."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file (a torn last line, from a killed process, is ignored)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class MetricsFile:
    """Appends one JSON object per logged step; knows its byte offset so a resume can truncate to it."""

    def __init__(self, path: str | Path, *, truncate_to: int | None = None) -> None:
        self.path = Path(path)
        if truncate_to is not None:
            with open(self.path, "ab") as f:  # creates the file if a resume finds none
                f.truncate(truncate_to)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the run
        self._file.seek(0, os.SEEK_END)

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps({k: clean_value(v) for k, v in row.items()}, allow_nan=False)
        self._file.write(line.encode() + b"\n")
        self._file.flush()

    def sync(self) -> int:
        """Flush to disk and return the byte offset of the end of the last complete row."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars into DIR/tb; on resume, events after the resumed step are purged."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class NullSink:
    """Stands in for MetricsFile and TensorBoardSink on processes other than rank 0, which write nothing."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def sync(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class WandbSink:
    """Scalars into a Weights & Biases run in ``DIR/wandb``: offline unless ``WANDB_MODE`` says otherwise, so
    nothing leaves the machine by default (``wandb sync DIR/wandb/offline-run-*`` uploads later)."""

    def __init__(self, run_dir: Path, *, name: str, config: dict[str, Any], resume: bool) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError("train.report_to includes 'wandb' but wandb is not installed: pip install wandb") from None
        self._run = wandb.init(
            dir=str(run_dir),
            name=name,
            id=_wandb_id(run_dir),
            resume="allow" if resume else None,
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
        )

    def write(self, row: dict[str, Any]) -> None:
        scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"}
        self._run.log({k if "/" in k else f"train/{k}": v for k, v in scalars.items()}, step=int(row["step"]))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._run.finish()


def _wandb_id(run_dir: Path) -> str:
    """A stable run id from the run directory, so a resumed run appends to the same W&B run."""
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]


class Sinks:
    """Every sink a run writes rows to besides metrics.jsonl (``train.report_to``), as one."""

    def __init__(self, sinks: list[Any]) -> None:
        self._sinks = sinks

    def write(self, row: dict[str, Any]) -> None:
        for sink in self._sinks:
            sink.write(row)

    def flush(self) -> None:
        for sink in self._sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
