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

from dipod.config import RunConfig, load_config

DIPOD_BETA = 0.05


@dataclass(frozen=True)
class Budget:
    """How long the demo runs: seeds, and overrides applied to each experiment's config."""

    seeds: tuple[int, ...]
    overrides: dict[str, tuple[str, ...]]


BUDGETS: dict[str, Budget] = {
    # About 10 minutes on 2 CPU cores.
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
            "control": ("train.steps=3", "train.eval_every=0", "drift.every=2", "control.eval_episodes=2"),
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
    out: str | Path, *, budget: str = "default", quiet: bool = False, domains: tuple[str, ...] = ("language", "control")
) -> Path:
    """Train every demo run into OUT/runs/, write OUT/report/, and return the report folder.

    Runs already finished in OUT are kept and runs cut short are resumed, so the demo can be re-run.
    """
    from dipod import trainers
    from dipod.diagnostics.report import write_report
    from dipod.runs import run_training

    console = Console(stderr=True, soft_wrap=True)
    say = console.print if not quiet else (lambda *a, **k: None)
    out = Path(out)
    runs = demo_configs(budget, domains)
    started = time.monotonic()
    say(f"[bold]dipod demo[/bold] ({budget} budget): {len(runs)} runs into {out}/runs, report in {out}/report")
    run_dirs = []
    for i, (name, cfg) in enumerate(runs, 1):
        run_dir = out / "runs" / name
        say(
            f"[{i}/{len(runs)}] {name}: {cfg.domain}, {cfg.objective.name}, dipod_beta={cfg.objective.dipod_beta}"
            f" -> {run_dir}",
            markup=False,
        )
        resume = run_dir.exists()  # continue a demo that was cut short
        run_training(cfg, run_dir, trainer_factory=trainers.build_trainer, resume=resume, quiet=quiet)
        run_dirs.append(run_dir)
    report_dir = out / "report"
    write_report(run_dirs, report_dir)
    if not quiet:
        console.print((report_dir / "report.md").read_text(), markup=False, soft_wrap=True)
    say(f"demo done in {time.monotonic() - started:.0f} s: {report_dir / 'report.md'}")
    return report_dir
