"""``dipod demo``: the embedded CPU end-to-end comparison.

Two experiments, each run without and with DiPOD's term over a few seeds, then one report:
- language: the tiny masked diffusion LM on 4x4 Sudoku, FPO vs FPO + DiPOD, starting from the SFT
  base checkpoint shipped in the package;
- control: a flow policy on the two-peak bandit, FPO++ vs FPO++ + DiPOD.
The configs live in ``dipod/configs/demo/``; a budget only overrides lengths and sizes.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from dipod.runs.config import RunConfig, load_config
from dipod.runs.grid import NOT_STARTED, GridRun, default_jobs, run_grid

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


def run_demo(
    out: str | Path,
    *,
    budget: str = "default",
    quiet: bool = False,
    jobs: int | None = None,
    domains: tuple[str, ...] = ("language", "control"),
) -> Path | None:
    """Train every demo run into OUT/runs/, write OUT/report/, and return the report folder.

    The runs go through ``run_grid`` (``jobs`` at a time); runs already finished in OUT are kept and runs
    cut short are resumed, so the demo can be re-run. Returns None, with no report, when a signal stopped it.
    """
    from dipod.runs.report import write_report

    console = Console(stderr=True, soft_wrap=True)
    say = console.print if not quiet else (lambda *a, **k: None)
    out = Path(out)
    jobs = jobs or default_jobs()
    runs = [GridRun(name, cfg, out / "runs" / name) for name, cfg in demo_configs(budget, domains)]
    started = time.monotonic()
    say(
        f"dipod demo ({budget} budget): {len(runs)} runs, {jobs} at a time, into {out}/runs; report in {out}/report",
        markup=False,
    )

    def done(i: int, run: GridRun, info: dict) -> None:
        reward = info["final_reward"]
        reward_text = f"{reward:+.3f}" if isinstance(reward, float) else "-"
        say(f"[{i}/{len(runs)}] {run.name}: {info['status']}, final reward {reward_text}, {info['wall_s']:.0f} s",
            markup=False)  # fmt: skip

    infos = run_grid(runs, jobs=jobs, quiet=quiet, on_done=done)
    if any(info["status"] in ("interrupted", NOT_STARTED["status"]) for info in infos):
        say(f"demo interrupted after {time.monotonic() - started:.0f} s: the same command continues it", markup=False)
        return None
    report_dir = out / "report"
    write_report([run.run_dir for run in runs], report_dir)
    if not quiet:
        console.print((report_dir / "report.md").read_text(), markup=False, soft_wrap=True)
    say(f"demo done in {time.monotonic() - started:.0f} s: {report_dir / 'report.md'}", markup=False)
    return report_dir
