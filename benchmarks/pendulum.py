"""Pendulum-v1 experiment: FPO++ vs FPO++ + DiPOD (optionally + self-distillation), return vs env steps.

Usage (long; run in the background):
    PYTHONPATH=. OMP_NUM_THREADS=1 nohup python benchmarks/pendulum.py --jobs 2 > pendulum.log 2>&1 &
Writes benchmarks/results/pendulum.json (per-run curves and a per-variant summary) and pendulum.png;
per-step logs go to benchmarks/results/pendulum_runs/<name>_seed<k>.jsonl.
Goal: mean training episode return >= -300 within 300k env steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dipod.control.experiment import carry_evaluations, plot_curves, plot_drift, results_from_logs, run_grid, summarise

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "configs/control/pendulum_fpo_pp.yaml", ROOT / "configs/control/pendulum_fpo_pp_dipod.yaml"]
THRESHOLD = -300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=[str(c) for c in CONFIGS])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=300_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/pendulum"))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="config overrides a.b=c")
    parser.add_argument("--drift-every", type=int, default=0, help="log the drift probe every this many steps")
    parser.add_argument("--compare", nargs="*", default=[], help="result JSONs whose runs join a comparison plot")
    parser.add_argument("--from-logs", action="store_true", help="summarise the existing per-step logs only")
    args = parser.parse_args()
    if args.drift_every:
        args.overrides = [*args.overrides, f"drift.every={args.drift_every}"]
    out = Path(args.out)
    if args.from_logs:
        results = results_from_logs(sorted((out.parent / f"{out.name}_runs").glob("*.jsonl")))
        carry_evaluations(results, out.with_suffix(".json"))
    else:
        results = run_grid(
            args.configs,
            args.seeds,
            args.env_steps,
            out.parent / f"{out.name}_runs",
            jobs=args.jobs,
            overrides=args.overrides,
        )
    summary = summarise(results, threshold=THRESHOLD)
    payload = {
        "name": out.name,
        "env": "Pendulum-v1",
        "threshold": THRESHOLD,
        "env_steps": args.env_steps,
        "summary": summary,
        "runs": results,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    plot_curves(
        results, out.with_suffix(".png"), title="Pendulum-v1: flow policy, FPO++ vs FPO++ + DiPOD", threshold=THRESHOLD
    )
    plot_drift(results, out.parent / f"{out.name}_drift.png", title="Pendulum-v1: drift probe")
    if args.compare:
        others = [r for path in args.compare for r in json.loads(Path(path).read_text())["runs"]]
        plot_curves(
            results + others, out.parent / f"{out.name}_compare.png", title="Pendulum-v1: flow vs Gaussian policy"
        )
    for name, entry in summary.items():
        print(
            f"{name}: final return {entry['final_return_mean']:.1f} +- {entry['final_return_std']:.1f}, "
            f"steps to {THRESHOLD:g}: {entry['steps_to_threshold']}, eval {entry['eval_return']}"
        )


if __name__ == "__main__":
    main()
