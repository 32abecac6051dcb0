"""``dipod demo``: the embedded CPU end-to-end comparison.

Two experiments, each run without and with DiPOD's term over a few seeds, then one report:
- language: the tiny masked diffusion LM on 4x4 Sudoku, FPO vs FPO + DiPOD, starting from the SFT
  base checkpoint shipped in the package;
- control: a flow policy on the two-peak bandit, FPO++ vs FPO++ + DiPOD.
The configs live in ``dipod/configs/demo/``; a budget only overrides lengths and sizes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from dipod.config import RunConfig, load_config

DIPOD_BETA = 0.05


@dataclass(frozen=True)
class Budget:
    """How long the demo runs: seeds, and overrides applied to each experiment's config."""

    seeds: tuple[int, ...]
    overrides: dict[str, tuple[str, ...]]


BUDGETS: dict[str, Budget] = {
    # About 6 minutes on 2 CPU cores (about 450 s of CPU time: 4 Sudoku runs of 60 steps, 4 bandit runs of 50).
    "default": Budget(seeds=(0, 1), overrides={"language": (), "control": ()}),
    # Seconds: exercises every piece end to end (used by the tests), numbers mean nothing.
    "small": Budget(
        seeds=(0,),
        overrides={
            "language": (
                "train.steps=2",
                "train.checkpoint_every=1",
                "drift.every=2",
                "drift.probe_size=2",
                "drift.num_orders=2",
                "language.prompts_per_step=2",
                "language.group_size=4",
                "language.num_iterations=1",
                "language.data.eval_size=8",
                "language.eval_batch_size=8",
            ),
            "control": (
                "train.steps=3",
                "train.eval_every=0",
                "drift.every=2",
                "control.num_envs=16",
                "control.eval_episodes=2",
            ),
        },
    ),
}

EXPERIMENTS = {"language": "language_sudoku.yaml", "control": "control_bandit.yaml"}


def demo_configs(budget: str, domains: tuple[str, ...] = ("language", "control")) -> list[tuple[str, RunConfig]]:
    """(run name, config) for every run of the demo, validated before anything trains."""
    plan = BUDGETS[budget]
    runs = []
    with ExitStack() as stack:
        for domain in domains:
            source = resources.files("dipod").joinpath("configs", "demo", EXPERIMENTS[domain])
            path = stack.enter_context(resources.as_file(source))
            for beta in (0.0, DIPOD_BETA):
                for seed in plan.seeds:
                    variant = "dipod" if beta else "baseline"
                    name = f"{domain}-{variant}-seed{seed}"
                    extra = [f"objective.dipod_beta={beta}", f"seed={seed}", f"name={name}"]
                    runs.append((name, load_config(path, [*plan.overrides[domain], *extra])))
    return runs


def _train_one(cfg: RunConfig, run_dir: Path, quiet: bool, threads: int | None) -> dict:
    """One demo run (also the worker of the process pool); a run cut short earlier is resumed."""
    import torch

    from dipod import trainers
    from dipod.runs import run_training

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.monotonic()
    resume = run_dir.exists()
    result = run_training(cfg, run_dir, trainer_factory=trainers.build_trainer, resume=resume, quiet=quiet)
    return {"status": result.status, "final_reward": result.summary.get("final_reward"),
            "wall_s": time.monotonic() - started}  # fmt: skip


def default_jobs() -> int:
    """Runs trained at once: one per CPU core, at most 2 (the demo's target machine)."""
    return max(1, min(2, os.cpu_count() or 1))


def run_demo(
    out: str | Path,
    *,
    budget: str = "default",
    quiet: bool = False,
    jobs: int | None = None,
    domains: tuple[str, ...] = ("language", "control"),
) -> Path:
    """Train every demo run into OUT/runs/, write OUT/report/, and return the report folder.

    With ``jobs`` > 1 the runs train in that many worker processes, one thread each (the runs are
    independent and seeded, so the results do not depend on ``jobs``); with 1 they train here, one
    after another, with a progress bar each. Runs already finished in OUT are kept and runs cut
    short are resumed, so the demo can be re-run.
    """
    from dipod.diagnostics.report import write_report

    console = Console(stderr=True, soft_wrap=True)
    say = console.print if not quiet else (lambda *a, **k: None)
    out = Path(out)
    jobs = jobs or default_jobs()
    runs = [(name, cfg, out / "runs" / name) for name, cfg in demo_configs(budget, domains)]
    started = time.monotonic()
    say(
        f"dipod demo ({budget} budget): {len(runs)} runs, {jobs} at a time, into {out}/runs; report in {out}/report",
        markup=False,
    )

    def done(i: int, name: str, info: dict) -> None:
        reward = info["final_reward"]
        reward_text = f"{reward:+.3f}" if isinstance(reward, float) else "-"
        say(f"[{i}/{len(runs)}] {name}: {info['status']}, final reward {reward_text}, {info['wall_s']:.0f} s",
            markup=False)  # fmt: skip

    if jobs == 1:
        for i, (name, cfg, run_dir) in enumerate(runs, 1):
            say(f"[{i}/{len(runs)}] {name} -> {run_dir}", markup=False)
            done(i, name, _train_one(cfg, run_dir, quiet, None))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(_train_one, cfg, run_dir, True, 1): name for name, cfg, run_dir in runs}
            say(f"training: {', '.join(name for name, _, _ in runs)}", markup=False)
            for i, future in enumerate(as_completed(futures), 1):
                done(i, futures[future], future.result())
    report_dir = out / "report"
    write_report([run_dir for _, _, run_dir in runs], report_dir)
    if not quiet:
        console.print((report_dir / "report.md").read_text(), markup=False, soft_wrap=True)
    say(f"demo done in {time.monotonic() - started:.0f} s: {report_dir / 'report.md'}", markup=False)
    return report_dir
