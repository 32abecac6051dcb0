"""Run an experiment on the one training loop and summarise it: ``python experiments/run.py SPEC.yaml``.

An experiment is a YAML spec (``experiments/specs/``): named variants, each a run config plus ``--set``
overrides, times a list of seeds. Every (variant, seed) is a run directory of the one loop
(``dipod.runs.grid``: checkpoints, resume, drift probe, health alarm), under ``experiments/runs/<name>/``
(git-ignored: raw per-seed logs are regenerated, not kept). Runs train two at a time; re-running the
command continues runs cut short and skips finished ones, so a killed session loses nothing.

A spec may list `prepare` steps that its runs depend on (an expert, its demonstrations, a BC clone), each a
command and the path it `creates`; a step whose path exists is skipped, so they too run once.

The summary goes to ``experiments/results/<name>/``, which the repository keeps: ``report.md`` and the
figures of ``dipod report`` (the same statistics and plots: mean ± std over seeds, collapse flags), and
``summary.json`` with the spec, the per-seed outcomes (final metrics, collapse step, wall time) and the
command that regenerates it.

    PYTHONPATH=. OMP_NUM_THREADS=1 nohup python experiments/run.py experiments/specs/sudoku_release.yaml &
    PYTHONPATH=. python experiments/run.py experiments/specs/sudoku_release.yaml --summarise-only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "experiments" / "runs"
RESULTS = ROOT / "experiments" / "results"
FINAL_KEYS = ("reward_mean", "eval/accuracy", "eval/reward", "eval/return", "episode_return", "drift/gap",
              "drift/grad_cosine", "drift/invertible_frac", "health/effective_tokens", "health/token_nll", "dipod_beta",
              "self_distill/gap_before", "self_distill/gap_after")  # fmt: skip
OUTCOME_COLUMNS = ("eval/accuracy", "eval/return", "health/effective_tokens", "health/token_nll", "drift/gap")
"""Per-seed final values shown in outcomes.md (those the runs logged)."""


def load_spec(path: Path) -> dict[str, Any]:
    """The spec, with every variant's config validated (errors name the spec, the variant and the key)."""
    from dipod.config import ConfigError
    from dipod.runs.config import load_config

    spec = yaml.safe_load(path.read_text())
    for key in ("name", "seeds", "variants"):
        if key not in spec:
            raise ConfigError(f"experiment spec {path}: missing `{key}`")
    for i, step in enumerate(spec.get("prepare", [])):
        if set(step) != {"run", "creates"}:
            raise ConfigError(
                f"experiment spec {path}: prepare[{i}] needs exactly `run` and `creates`, got {sorted(step)}"
            )
    for variant, entry in spec["variants"].items():
        try:
            load_config(ROOT / entry["config"], [*spec.get("set", []), *entry.get("set", [])])
        except ConfigError as exc:
            raise ConfigError(f"experiment spec {path}, variant {variant!r}: {exc}") from None
    return spec


def prepare(spec: dict[str, Any]) -> None:
    """Run the spec's `prepare` steps in order from the repository root, skipping those whose output exists."""
    for step in spec.get("prepare", []):
        if (ROOT / step["creates"]).exists():
            continue
        print(f"prepare: {step['run']}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = shlex.split(step["run"])
        if argv[0] == "dipod":  # the CLI of this interpreter, installed or not
            argv = [sys.executable, "-m", "dipod.cli", *argv[1:]]
        subprocess.run(argv, cwd=ROOT, env=env, check=True)


def grid(spec: dict[str, Any], seeds: list[int] | None = None, variants: list[str] | None = None) -> list[Any]:
    """One GridRun per (variant, seed): the variant's config with the spec's and its own overrides."""
    from dipod.runs.config import load_config
    from dipod.runs.grid import GridRun

    runs = []
    for seed in seeds or spec["seeds"]:
        for variant, entry in spec["variants"].items():
            if variants and variant not in variants:
                continue
            overrides = [*spec.get("set", []), *entry.get("set", []), f"seed={seed}", f"name={variant}"]
            cfg = load_config(ROOT / entry["config"], overrides)
            runs.append(GridRun(f"{variant}-seed{seed}", cfg, RUNS / spec["name"] / f"{variant}-seed{seed}"))
    return runs


def summarise(spec: dict[str, Any], spec_path: Path, runs: list[Any]) -> Path:
    """report.md, figures and summary.json of the finished (or partly finished) runs."""
    from dipod.runs.report import load_run, write_report

    out = RESULTS / spec["name"]
    done = [run for run in runs if (run.run_dir / "metrics.jsonl").is_file()]
    write_report([run.run_dir for run in done], out)
    per_run = {}
    for run in done:
        record = load_run(run.run_dir)
        per_run[run.name] = {
            "status": record.summary.get("status"),
            "step": record.summary.get("step"),
            "time_s": record.summary.get("time_s"),
            "collapsed_at": record.collapsed_at,
            **{key: record.final(key) for key in FINAL_KEYS},
        }
    command = f"PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/run.py {spec_path.relative_to(ROOT)}"
    summary = {"spec": spec, "command": command, "runs": per_run}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "outcomes.md").write_text(outcomes_table(per_run, command))
    return out


def outcomes_table(per_run: dict[str, dict[str, Any]], command: str) -> str:
    """A markdown table with one row per run: how it ended, whether and when the collapse alarm fired, and its
    final values."""
    columns = [c for c in OUTCOME_COLUMNS if any(run.get(c) is not None for run in per_run.values())]
    lines = [f"Per-seed outcomes (`{command}`):", "", "| run | status | collapse alarm at step | time (s) | "
             + " | ".join(f"final {c}" for c in columns) + " |", "|" + "---|" * (4 + len(columns))]  # fmt: skip
    for name, run in sorted(per_run.items()):
        cells = [name, str(run["status"]), "—" if run["collapsed_at"] is None else str(run["collapsed_at"]),
                 f"{run['time_s']:.0f}" if run["time_s"] else "—"]  # fmt: skip
        cells += ["—" if run.get(c) is None else f"{run[c]:.3f}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: the spec's)")
    parser.add_argument("--variants", nargs="*", help="only these variants (default: all)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: 2 on 2 cores)")
    parser.add_argument("--summarise-only", action="store_true", help="no training: summarise what is there")
    args = parser.parse_args(argv)
    from dipod.runs.grid import run_grid

    spec_path = args.spec.resolve()
    spec = load_spec(spec_path)
    unknown = set(args.variants or []) - set(spec["variants"])
    if unknown:
        parser.error(f"--variants {' '.join(sorted(unknown))}: not in {spec_path} (its: {', '.join(spec['variants'])})")
    runs = grid(spec, args.seeds, args.variants)
    if not args.summarise_only:
        prepare(spec)
        run_grid(runs, jobs=args.jobs, quiet=True,
                 on_done=lambda i, run, info: print(f"[{i}/{len(runs)}] {run.name}: {info}", flush=True))  # fmt: skip
    print(f"summary in {summarise(spec, spec_path, grid(spec))}")  # every run of the spec there is
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
