"""Many runs of the one loop: a grid of (name, config, run dir), trained a few at a time, each resumable.

The demo and every experiment script go through ``run_grid``: runs already finished are kept, runs cut
short (a killed session) continue from their last checkpoint, so re-running a grid only does what is left.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dipod.runs.config import RunConfig
from dipod.runs.interrupt import InterruptFlag


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
    grid again continues where it stopped. With workers, a signal sent to this process alone is passed on to
    them, so it stops the grid in the same way.
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
    say = _silent if quiet else _to_stderr
    with (
        ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
        InterruptFlag(say, forward=_signal_workers) as interrupt,
    ):
        waiting = iter(range(len(runs)))
        running: dict[Future, int] = {}
        done, stop = 0, False
        while True:
            # Runs are handed to the pool one per free worker, so that after a stop none is left queued in it.
            while not (stop or interrupt.raised) and len(running) < jobs and (i := next(waiting, None)) is not None:
                running[pool.submit(train_one, runs[i].cfg, runs[i].run_dir, True, 1)] = i
            if not running:
                return infos
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                i, done = running.pop(future), done + 1
                infos[i] = future.result()
                if on_done is not None:
                    on_done(done, runs[i], infos[i])
                stop = stop or infos[i]["status"] == "interrupted"


def _signal_workers(signum: int) -> None:
    """Pass a signal on to the pool's worker processes (this process's multiprocessing children)."""
    for worker in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(worker.pid, signum)


def _silent(message: str) -> None:
    pass


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
