"""Checkpoint files: atomic writes, readable errors, fallback to the previous good one, pruning.

A checkpoint is one ``torch.save`` file ``checkpoints/step_<N>.pt``. It is written to a temporary
file in the same directory, flushed and fsynced, moved over the final name with ``os.replace`` and
the directory is fsynced, so a crash at any point leaves either the old file set or the new one,
never a half-written checkpoint under a final name.

Checkpoints are pickles (trainer state may hold numpy and environment objects): load only your own.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1
KEEP_LAST = 3
"""How many checkpoints a run directory keeps (older ones are deleted after a successful write)."""

_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint after ``step`` completed steps lives."""
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, os.replace, fsync of the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint, or raise CheckpointError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, bad pickle, wrong file: all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "trainer" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a dipod checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def latest_checkpoint(
    directory: str | Path, *, warn: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``directory`` and its payload, or None if there is none.

    An unreadable newer checkpoint is reported through ``warn`` and the previous one is tried, so a
    crash during an unusual write (or a damaged disk) costs at most one checkpoint interval. Raises
    CheckpointError when checkpoints exist but none can be read.
    """
    candidates = list_checkpoints(directory)
    errors: list[str] = []
    for path in reversed(candidates):
        try:
            payload = load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            warn(f"warning: {exc}; falling back to the previous checkpoint")
            continue
        if errors:
            warn(f"resuming from {path} instead")
        return path, payload
    if errors:
        raise CheckpointError("no readable checkpoint in " + str(directory) + ":\n  " + "\n  ".join(errors))
    return None


def prune_checkpoints(directory: str | Path, keep: int = KEEP_LAST) -> None:
    """Delete all but the newest ``keep`` checkpoints, and stale temporary files."""
    directory = Path(directory)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    for tmp in directory.glob(".step_*.tmp"):
        tmp.unlink(missing_ok=True)
