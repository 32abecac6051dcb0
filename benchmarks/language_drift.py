"""Tiny 4x4 Sudoku (and Countdown): FPO vs FPO + DiPOD and SPG vs SPG + DiPOD, reward and double-drift curves.

Each run trains ``LanguageTrainer`` from the shipped SFT base with one of the configs below and,
every ``--every`` steps, measures the drift probe on fresh completions from the probe's own random
streams (so probing does not change the training trajectory): drift/elbo, drift/loglik (the
importance-weighted bound over ``drift.num_orders`` orders; exact enumeration is out of reach at
L = 16), drift/gap and drift/grad_cosine. One JSON row per step goes to
benchmarks/results/language_drift_runs/<name>_seed<k>.jsonl; the summary, table and figure to
benchmarks/results/language_drift.{json,png}. Configs: configs/experiments/sudoku_*_drift.yaml
(the tiny Sudoku configs at a 2-CPU budget, drift.every 10, probe_size 8, num_orders 8). With ``--tag T`` the
logs go to benchmarks/results/language_drift_T_runs/ and the summary to language_drift_T.{json,png}, so a
second sweep (e.g. configs/experiments/sudoku_*_tuned_drift.yaml with ``--tag tuned``) keeps the first. The same
script runs tiny Countdown with configs/experiments/countdown_*_tuned_drift.yaml and ``--tag countdown`` (their SFT
base, runs/countdown_sft, is made first; benchmarks/results/RESULTS.md §3 gives the command).

    PYTHONPATH=. OMP_NUM_THREADS=1 nohup python benchmarks/language_drift.py --seeds 0 1 2 > lang.log 2>&1 &
    PYTHONPATH=. python benchmarks/language_drift.py --summarise-only
    PYTHONPATH=. OMP_NUM_THREADS=1 nohup python benchmarks/language_drift.py --tag tuned \
        --configs configs/experiments/sudoku_fpo_tuned_drift.yaml --seeds 0 1 2 > lang_tuned.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def output_names(tag: str | None) -> tuple[Path, str]:
    """(runs folder, summary file stem) for a sweep: language_drift[_<tag>]_runs/ and language_drift[_<tag>]."""
    stem = f"language_drift_{tag}" if tag else "language_drift"
    return RESULTS / f"{stem}_runs", stem


CONFIGS = [
    "configs/experiments/sudoku_fpo_drift.yaml",
    "configs/experiments/sudoku_fpo_dipod_drift.yaml",
    "configs/experiments/sudoku_spg_drift.yaml",
    "configs/experiments/sudoku_spg_dipod_drift.yaml",
]
TASK_TITLES = {"sudoku": "tiny 4x4 Sudoku", "countdown": "tiny Countdown"}  # figure titles by run-name prefix
KEEP = (
    "step",
    "reward_mean",
    "drift/gap",
    "drift/grad_cosine",
    "drift/elbo",
    "drift/loglik",
    "eval/accuracy",
    "eval/reward_mean",
)


def train_with_probe(
    config: str, seed: int, overrides: list[str], adaptive_budget: float | None = None, runs: Path | None = None
) -> Path:
    """One run of ``train.steps`` steps with the probe every ``drift.every`` steps (and at step 0); returns its log.

    The log goes to ``runs`` (default: the untagged runs folder).

    With ``adaptive_budget`` the DiPOD weight follows ``adapt_beta`` on each probe's gap (starting
    from ``objective.dipod_beta``, clamped to [0.005, 0.4]).
    """
    import numpy as np
    import torch

    from dipod.runs.config import load_config
    from dipod.diagnostics.adaptive_beta import AdaptiveBetaConfig, adapt_beta
    from dipod.diagnostics.drift import language_trainer_drift_probe
    from dipod.language.trainer import LanguageTrainer

    torch.set_num_threads(1)
    cfg = load_config(ROOT / config, [*overrides, f"seed={seed}"])
    steps, every = cfg.train.steps, cfg.drift.every
    trainer = LanguageTrainer(cfg)
    gen_probe = torch.Generator(device=trainer.device).manual_seed(1000 * seed + 3)
    np_probe = np.random.default_rng(1000 * seed + 3)
    runs = runs if runs is not None else output_names(None)[0]
    runs.mkdir(parents=True, exist_ok=True)
    log_path = runs / f"{cfg.name}_seed{seed}.jsonl"
    start, probe_s, train_s = time.perf_counter(), 0.0, 0.0
    with log_path.open("w") as log:
        for step in range(steps + 1):
            row: dict = {"step": step}
            if step > 0:
                t0 = time.perf_counter()
                row.update(trainer.train_step())
                train_s += time.perf_counter() - t0
            if every and step % every == 0:
                t0 = time.perf_counter()
                row.update(language_trainer_drift_probe(trainer, gen_probe, np_probe))
                probe_s += time.perf_counter() - t0
                if adaptive_budget is not None:
                    rule = AdaptiveBetaConfig(budget=adaptive_budget, beta_min=0.005, beta_max=0.4)
                    trainer.cfg.objective.dipod_beta = adapt_beta(
                        trainer.cfg.objective.dipod_beta, row["drift/gap"], rule
                    )
            row["beta"] = trainer.cfg.objective.dipod_beta
            if step == steps:
                row.update(trainer.evaluate())
            row.update(time_s=time.perf_counter() - start, train_s=train_s, probe_s=probe_s)
            log.write(json.dumps(row) + "\n")
            log.flush()
    return log_path


def base_eval(config: str) -> dict:
    """Held-out evaluation of the untrained SFT base (the starting point of every run)."""
    import torch

    from dipod.runs.config import load_config
    from dipod.language.trainer import LanguageTrainer

    torch.set_num_threads(1)
    return LanguageTrainer(load_config(ROOT / config)).evaluate()


def _mean_std(values: list[float | None]) -> list[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return [math.nan, math.nan]
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return [m, s]


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]


def summarise(paths: list[Path]) -> dict:
    variants: dict[str, list[list[dict]]] = {}
    for path in paths:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows or "eval/accuracy" not in rows[-1]:  # still running (the last row evaluates)
            continue
        variants.setdefault(path.stem.rsplit("_seed", 1)[0], []).append(rows)
    out = {}
    for name, runs in sorted(variants.items()):

        def tail_mean(rows: list[dict], key: str, n: int = 10) -> float | None:
            vals = [v for _, v in _series(rows, key)][-n:]
            return sum(vals) / len(vals) if vals else None

        def first(rows: list[dict], key: str) -> float | None:
            vals = _series(rows, key)
            return vals[0][1] if vals else None

        def last(rows: list[dict], key: str) -> float | None:
            vals = _series(rows, key)
            return vals[-1][1] if vals else None

        def mean_after0(rows: list[dict], key: str) -> float | None:
            """Mean over the probes after step 0 (a single 8-completion probe is noisy)."""
            vals = [v for t, v in _series(rows, key) if t > 0]
            return sum(vals) / len(vals) if vals else None

        out[name] = {
            "seeds": len(runs),
            "steps": [r[-1]["step"] for r in runs],
            "reward_last10": _mean_std([tail_mean(r, "reward_mean") for r in runs]),
            "eval_accuracy": _mean_std([last(r, "eval/accuracy") for r in runs]),
            "gap_start": _mean_std([first(r, "drift/gap") for r in runs]),
            "gap_end": _mean_std([last(r, "drift/gap") for r in runs]),
            "gap_mean_after0": _mean_std([mean_after0(r, "drift/gap") for r in runs]),
            "gap_change": _mean_std(
                [None if first(r, "drift/gap") is None else last(r, "drift/gap") - first(r, "drift/gap") for r in runs]
            ),
            "grad_cosine_mean": _mean_std(
                [
                    (sum(v for _, v in _series(r, "drift/grad_cosine")) / max(1, len(_series(r, "drift/grad_cosine"))))
                    for r in runs
                ]
            ),
            "probe_fraction": _mean_std([r[-1]["probe_s"] / max(r[-1]["train_s"], 1e-9) for r in runs]),
        }
    runs_out = {n: [[{k: row[k] for k in KEEP if k in row} for row in r] for r in runs] for n, runs in variants.items()}
    return {"variants": out, "runs": runs_out}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = (
        ("reward_mean", "training reward"),
        ("drift/gap", "drift/gap (IW loglik - ELBO, nats)"),
        ("drift/grad_cosine", "drift/grad_cosine"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name, runs in summary["runs"].items():
        for ax, (key, label) in zip(axes, keys, strict=True):
            series = [dict(_series(rows, key)) for rows in runs]
            steps = sorted(set().union(*series))
            if not steps:
                continue
            values = np.array([[s.get(t, np.nan) for t in steps] for s in series], dtype=float)
            mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
            ax.plot(steps, mean, label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            ax.set_xlabel("policy-improvement step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    task = next(iter(summary["runs"]), "").split("_")[0]
    fig.suptitle(f"{TASK_TITLES.get(task, task)}, mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(summary: dict) -> str:
    keys = (
        "reward_last10",
        "eval_accuracy",
        "gap_start",
        "gap_end",
        "gap_mean_after0",
        "gap_change",
        "grad_cosine_mean",
        "probe_fraction",
    )
    lines = ["| variant | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, v in summary["variants"].items():
        lines.append(f"| {name} | {v['seeds']} | " + " | ".join(f"{v[k][0]:.3f} ± {v[k][1]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--adaptive-budget", type=float, default=None, help="adapt beta to this gap (nats)")
    parser.add_argument("--summarise-only", action="store_true")
    parser.add_argument("--tag", default=None, help="write language_drift_<tag>_runs/ and language_drift_<tag>.*")
    parser.add_argument("--base-eval", action="store_true", help="evaluate the untrained base of --configs[0] and stop")
    args = parser.parse_args()
    if args.base_eval:
        result = base_eval(args.configs[0])
        name = f"language_base_eval_{args.tag}.json" if args.tag else "language_base_eval.json"
        (RESULTS / name).write_text(json.dumps(result, indent=1))
        print(result)
        return
    runs, stem = output_names(args.tag)
    if not args.summarise_only:
        for seed in args.seeds:  # seed-major, so a cut-short sweep still has every variant
            for config in args.configs:
                log = train_with_probe(config, seed, args.overrides, args.adaptive_budget, runs)
                print("done", log, flush=True)
    summary = summarise(sorted(runs.glob("*.jsonl")))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary))
    plot(summary, RESULTS / f"{stem}.png")
    print(table(summary))


if __name__ == "__main__":
    main()
