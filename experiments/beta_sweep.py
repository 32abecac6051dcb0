"""DiPOD weight: a fixed-beta sweep (0, 0.01, 0.05, 0.2) and the adaptive rule, on the two-token toy.

The toy stands in for a language task here (exact gap, minutes on 2 CPU cores). The adaptive rule
(dipod.diagnostics.adaptive_beta) reads the monitored on-policy gap every ``--every`` steps and
doubles beta above the budget, halves it below budget / 1.5, clamped to [0.005, 0.4].

    PYTHONPATH=. python experiments/beta_sweep.py [--quick] [--objective fpo|spg] [--budget 0.01]

Writes experiments/results/beta_sweep_<objective>.{json,png} and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from two_token import RESULTS, curves, plot, run_seeds, summary, table

from dipod.diagnostics.adaptive_beta import AdaptiveBetaConfig, adapt_beta
from dipod.diagnostics.toy import ToyConfig

FIXED = (0.0, 0.01, 0.05, 0.2)


def adaptive(every: int, cfg: AdaptiveBetaConfig):
    """A beta_fn for train_toy: adapt from the monitored gap every ``every`` steps."""

    def beta_fn(step: int, row: dict, beta: float) -> float:
        return adapt_beta(beta, row["gap"], cfg) if (step + 1) % every == 0 else beta

    return beta_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--objective", default="fpo", choices=("fpo", "spg"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--budget", type=float, default=0.01, help="adaptive rule's gap budget (nats)")
    parser.add_argument("--every", type=int, default=10, help="adaptive rule's monitor interval (steps)")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--noisy", action="store_true", help="Bernoulli rewards")
    args = parser.parse_args()
    seeds = list(range(2 if args.quick else args.seeds))
    steps = 60 if args.quick else args.steps
    start = time.perf_counter()
    results = {}
    for beta in FIXED:
        base = ToyConfig(objective=args.objective, beta=beta, steps=steps, lr=args.lr, noisy=args.noisy)
        runs = run_seeds(base, seeds)
        results[f"beta={beta}"] = {"config": base.__dict__, "curves": curves(runs), "summary": summary(runs)}
    rule = AdaptiveBetaConfig(budget=args.budget, factor=2.0, beta_min=0.005, beta_max=0.4)
    base = ToyConfig(objective=args.objective, beta=0.05, steps=steps, lr=args.lr, noisy=args.noisy)
    runs = run_seeds(base, seeds, beta_fn=lambda: adaptive(args.every, rule))
    label = f"adaptive (budget {args.budget}, every {args.every})"
    results[label] = {
        "config": {**base.__dict__, "adaptive": rule.__dict__},
        "curves": curves(runs),
        "summary": summary(runs),
    }
    fixed = {k: v for k, v in results.items() if k.startswith("beta=")}
    # Best fixed beta: highest final reward, ties (within 0.001) broken by the lower mean gap.
    best = max(
        fixed, key=lambda k: (round(fixed[k]["summary"]["final_reward"][0], 3), -fixed[k]["summary"]["mean_gap"][0])
    )
    name = f"beta_sweep_{args.objective}{'_noisy' if args.noisy else ''}"
    plot(results, RESULTS / f"{name}.png", f"DiPOD weight on the two-token toy ({args.objective}), {len(seeds)} seeds")
    mean_beta = [sum(r["beta"] for r in run) / len(run) for run in runs]
    payload = {
        "name": name,
        "seeds": seeds,
        "steps": steps,
        "best_fixed": best,
        "adaptive_mean_beta": mean_beta,
        "seconds": time.perf_counter() - start,
        "methods": results,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    print(table(results))
    print(f"\nbest fixed: {best}; adaptive mean beta per seed: {[round(b, 4) for b in mean_beta]}")


if __name__ == "__main__":
    main()
