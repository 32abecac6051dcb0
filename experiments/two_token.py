"""The two-token toy: exact log pi - ELBO and reward under FPO, SPG and either + DiPOD, over seeds.

Claim under test (the paper's toy figure): the on-policy gap grows most under FPO, less under SPG,
least with DiPOD. Everything plotted is an exact expectation under the policy (no estimator noise);
the spread is over training seeds.

    PYTHONPATH=. python experiments/two_token.py            # 5 seeds x 300 steps, Adam lr 0.02, both reward settings
    PYTHONPATH=. python experiments/two_token.py --quick    # 2 seeds x 60 steps

Writes experiments/results/two_token[_noisy].{json,png} and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from dipod.diagnostics.toy import ToyConfig, train_toy

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {  # label -> (objective, beta)
    "FPO": ("fpo", 0.0),
    "FPO + DiPOD": ("fpo", 0.05),
    "SPG": ("spg", 0.0),
    "SPG + DiPOD": ("spg", 0.05),
}
CURVES = ("reward", "gap", "gap_max", "grad_cosine", "beta")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of the finite values; NaN when there are none."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def run_seeds(base: ToyConfig, seeds: list[int], beta_fn=None) -> list[list[dict]]:
    """One training run per seed, each a list of per-step rows."""
    runs = []
    for seed in seeds:
        cfg = ToyConfig(**{**base.__dict__, "seed": seed})
        runs.append(train_toy(cfg, beta_fn=None if beta_fn is None else beta_fn()))
    return runs


def curves(runs: list[list[dict]]) -> dict[str, dict[str, list[float]]]:
    """Per-step mean and std over seeds of each curve."""
    out = {}
    for key in CURVES:
        per_step = list(zip(*[[row[key] for row in run] for run in runs], strict=True))
        stats = [mean_std(list(values)) for values in per_step]
        out[key] = {"mean": [m for m, _ in stats], "std": [s for _, s in stats]}
    return out


def summary(runs: list[list[dict]]) -> dict[str, list[float]]:
    """Per-seed scalars, then mean and std: final reward, mean and peak on-policy gap, final worst-outcome
    gap, mean gradient cosine (over steps where the cosine is defined, i.e. advantages not all zero)."""
    tail = max(1, len(runs[0]) // 10)
    per_seed = {
        "final_reward": [sum(r["reward"] for r in run[-tail:]) / tail for run in runs],
        "mean_gap": [sum(r["gap"] for r in run) / len(run) for run in runs],
        "peak_gap": [max(r["gap"] for r in run) for run in runs],
        "final_gap_max": [run[-1]["gap_max"] for run in runs],
        "mean_grad_cosine": [
            sum(c) / max(1, len(c))
            for c in ([r["grad_cosine"] for r in run if math.isfinite(r["grad_cosine"])] for run in runs)
        ],
    }
    return {k: [*mean_std(v)] for k, v in per_seed.items()}


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    """Gap, reward and gradient cosine against steps, mean +- std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, res in results.items():
        for ax, key, name in zip(
            axes,
            ("gap", "reward", "grad_cosine"),
            ("E_pi[log pi - ELBO] (nats)", "E_pi[reward]", "grad cosine"),
            strict=True,
        ):
            mean, std = res["curves"][key]["mean"], res["curves"][key]["std"]
            steps = range(len(mean))
            ax.plot(steps, mean, label=label)
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                alpha=0.2,
            )
            ax.set_xlabel("policy-improvement step")
            ax.set_ylabel(name)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, dict]) -> str:
    """Markdown table of the summaries (mean +- std over seeds)."""
    keys = ("final_reward", "mean_gap", "peak_gap", "final_gap_max", "mean_grad_cosine")
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, res in results.items():
        cells = [f"{res['summary'][k][0]:.4f} ± {res['summary'][k][1]:.4f}" for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--tag", default="", help="suffix of the output files")
    args = parser.parse_args()
    seeds = list(range(2 if args.quick else args.seeds))
    steps = 60 if args.quick else args.steps
    RESULTS.mkdir(parents=True, exist_ok=True)
    for noisy in (False, True):
        name = ("two_token_noisy" if noisy else "two_token") + args.tag
        results = {}
        start = time.perf_counter()
        for label, (objective, beta) in METHODS.items():
            base = ToyConfig(objective=objective, beta=beta, steps=steps, noisy=noisy, lr=args.lr)
            runs = run_seeds(base, seeds)
            results[label] = {"config": base.__dict__, "curves": curves(runs), "summary": summary(runs)}
        title = (
            f"two-token toy, V=4, reward 1[x1 = x2]{' (Bernoulli)' if noisy else ''}, Adam lr {args.lr}, "
            f"{len(seeds)} seeds, mean ± std"
        )
        plot(results, RESULTS / f"{name}.png", title)
        payload = {
            "name": name,
            "seeds": seeds,
            "steps": steps,
            "seconds": time.perf_counter() - start,
            "methods": results,
        }
        (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
        print(f"## {title}\n\n{table(results)}\n")


if __name__ == "__main__":
    main()
