"""MuJoCo experiment (HalfCheetah-v5 by default): flow policy with FPO++, return vs env steps.

Usage (long; run in the background):
    PYTHONPATH=. OMP_NUM_THREADS=1 nohup python benchmarks/halfcheetah.py > halfcheetah.log 2>&1 &
    python benchmarks/halfcheetah.py --from-logs   # summarise whatever the per-step logs hold so far
Writes benchmarks/results/halfcheetah.json and halfcheetah.png; per-step logs go to
benchmarks/results/halfcheetah_runs/<name>_seed<k>.jsonl. Target: 1M env steps; the JSON records how many ran.
Other MuJoCo tasks: pass their configs and an --out, e.g. (FPO++ vs + DiPOD vs + self-distillation, drift probe):
    python benchmarks/halfcheetah.py --configs configs/control/hopper_fpo_pp{,_dipod,_selfdistill}.yaml \
        --seeds 0 1 2 --env-steps 250000 --jobs 2 --drift-every 10 --out benchmarks/results/hopper
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dipod.runs.config import load_config
from dipod.control.experiment import carry_evaluations, plot_curves, plot_drift, results_from_logs, run_grid, summarise

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=[str(ROOT / "configs/control/halfcheetah_fpo_pp.yaml")])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--env-steps", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/halfcheetah"))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="config overrides a.b=c")
    parser.add_argument("--drift-every", type=int, default=0, help="log the drift probe every this many steps")
    parser.add_argument("--compare", nargs="*", default=[], help="result JSONs whose runs join a comparison plot")
    parser.add_argument("--from-logs", action="store_true", help="summarise the existing per-step logs only")
    args = parser.parse_args()
    if args.drift_every:
        args.overrides = [*args.overrides, f"drift.every={args.drift_every}"]
    env = load_config(args.configs[0], args.overrides).control.env
    out = Path(args.out)
    log_dir = out.parent / f"{out.name}_runs"
    if args.from_logs:
        results = results_from_logs(sorted(log_dir.glob("*.jsonl")))
        carry_evaluations(results, out.with_suffix(".json"))
    else:
        results = run_grid(args.configs, args.seeds, args.env_steps, log_dir, jobs=args.jobs, overrides=args.overrides)
    summary = summarise(results)
    payload = {
        "name": out.name,
        "env": env,
        "target_env_steps": args.env_steps,
        "env_steps_run": {f"{r['name']}_seed{r['seed']}": r["env_steps"] for r in results},
        "summary": summary,
        "runs": results,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    plot_curves(results, out.with_suffix(".png"), title=f"{env}: flow policy, FPO++")
    plot_drift(results, out.parent / f"{out.name}_drift.png", title=f"{env}: drift probe")
    if args.compare:
        others = [r for path in args.compare for r in json.loads(Path(path).read_text())["runs"]]
        plot_curves(results + others, out.parent / f"{out.name}_compare.png", title=f"{env}: flow vs Gaussian policy")
    for r in results:
        last = r["episode_return"][-1] if r["episode_return"] else float("nan")
        print(f"{r['name']} seed {r['seed']}: {r['env_steps']} env steps, last episode return {last:.1f}")
    for name, entry in summary.items():
        mean, std = entry["final_return_mean"], entry["final_return_std"]
        print(f"{name}: final return {mean:.1f} +- {std:.1f}, eval {entry['eval_return']}")


if __name__ == "__main__":
    main()
