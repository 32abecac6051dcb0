"""Many runs of the one loop: a grid of (name, config, run dir), trained a few at a time, each resumable.

The demo and every experiment script go through ``run_grid``: runs already finished are kept, runs cut
short (a killed session) continue from their last checkpoint, so re-running a grid only does what is left.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dipod.runs.config import RunConfig


@dataclass(frozen=True)
class GridRun:
    """One run of a grid."""

    name: str
    cfg: RunConfig
    run_dir: Path


NOT_STARTED: dict[str, Any] = {"status": "not started", "final_reward": None, "wall_s": 0.0}
"""The info of a run the grid did not start (it stopped on an interrupted run first)."""


def default_jobs() -> int:
    """Runs trained at once: one per CPU core, at most 2 (the machine dipod's CPU defaults are sized for)."""
    return max(1, min(2, os.cpu_count() or 1))


def train_one(cfg: RunConfig, run_dir: Path, quiet: bool, threads: int | None) -> dict[str, Any]:
    """One run (also the worker of the process pool): continued if ``run_dir`` holds a checkpoint."""
    import torch

    from dipod.runs.loop import run_training
    from dipod.runs.trainers import build_trainer

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.monotonic()
    result = run_training(cfg, run_dir, trainer_factory=build_trainer, resume="auto", quiet=quiet)
    return {"status": result.status, "final_reward": result.summary.get("final_reward"),
            "wall_s": time.monotonic() - started}  # fmt: skip


def run_grid(
    runs: list[GridRun],
    *,
    jobs: int | None = None,
    quiet: bool = False,
    on_done: Callable[[int, GridRun, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every run; returns one info dict per run (status, final_reward, wall_s), in ``runs`` order.

    With ``jobs`` > 1 the runs train in that many worker processes, one thread each (the runs are
    independent and seeded, so results do not depend on ``jobs``); with 1 they train here, one after
    another, with a progress bar each unless ``quiet``. A run stopped by a signal (Ctrl-C, SIGTERM: it
    checkpoints) stops the grid: runs not yet started stay so (status ``not started``), and running the
    grid again continues where it stopped.
    """
    jobs = jobs or default_jobs()
    infos: list[dict[str, Any]] = [dict(NOT_STARTED) for _ in runs]
    if jobs == 1:
        for i, run in enumerate(runs):
            infos[i] = train_one(run.cfg, run.run_dir, quiet, None)
            if on_done is not None:
                on_done(i + 1, run, infos[i])
            if infos[i]["status"] == "interrupted":
                break
        return infos
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(train_one, run.cfg, run.run_dir, True, 1): i for i, run in enumerate(runs)}
        try:
            done = 0
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                i, done = futures[future], done + 1
                infos[i] = future.result()
                if on_done is not None:
                    on_done(done, runs[i], infos[i])
                if infos[i]["status"] == "interrupted":
                    for pending in futures:
                        pending.cancel()  # only runs not yet started can be cancelled
        except KeyboardInterrupt:  # the workers got the signal too and are checkpointing
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return infos
