"""Experiment: the tiny model's 4x4 Sudoku reward under FPO + DiPOD, rising from its SFT start.

Runs the shipped configs (configs/language/sudoku_fpo_dipod.yaml and, as the baseline,
sudoku_fpo.yaml) from the shipped SFT base for a number of steps and seeds, logs the training reward
of every step and the greedy evaluation accuracy every ``--eval-every`` steps, and writes
benchmarks/results/sudoku_rl.json and benchmarks/results/sudoku_rl.png. It also measures the peak
memory of one tiny-model RL step in a fresh process (peak RSS, reset through /proc/self/clear_refs).

    python benchmarks/sudoku_rl.py --steps 60 --seeds 0 1 --eval-every 10
    python benchmarks/sudoku_rl.py --quick          # a few steps, to check it runs

This is an experiment (minutes on 2 CPU cores), not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {"fpo": "sudoku_fpo.yaml", "fpo_dipod": "sudoku_fpo_dipod.yaml"}

MEMORY_PROBE = """
import sys, torch
torch.set_num_threads(1)
from dipod.runs.config import load_config
from dipod.language.trainer import LanguageTrainer

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024  # kB -> MiB

trainer = LanguageTrainer(load_config(sys.argv[1]))
for _ in range(2):  # the first step allocates; the second shows the steady state
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = status("VmRSS")
    trainer.train_step()
    print(before, status("VmHWM"))
"""


def run_variant(config: Path, seed: int, steps: int, eval_every: int, overrides: list[str]) -> dict:
    """Train one variant; returns its per-step rewards and the evaluation curve."""
    import torch

    from dipod.runs.config import load_config
    from dipod.language.trainer import LanguageTrainer

    torch.set_num_threads(1)
    cfg = load_config(config, [f"seed={seed}", *overrides])
    trainer = LanguageTrainer(cfg)
    evals = [(0, trainer.evaluate())]
    rows = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        metrics = trainer.train_step()
        rows.append({"step": step, **metrics})
        if step % eval_every == 0 or step == steps:
            evals.append((step, trainer.evaluate()))
            acc = evals[-1][1]["eval/accuracy"]
            print(
                f"  {config.stem} seed {seed} step {step}: reward {metrics['reward_mean']:.3f} eval {acc:.3f}",
                flush=True,
            )
    return {
        "reward": [r["reward_mean"] for r in rows],
        "elbo_mean": [r["elbo_mean"] for r in rows],
        "eval_steps": [s for s, _ in evals],
        "eval_accuracy": [e["eval/accuracy"] for _, e in evals],
        "seconds_per_step": (time.perf_counter() - start) / steps,
    }


def peak_memory_mb(config: Path) -> tuple[float, float, float]:
    """(RSS before the first RL step, peak RSS during it, peak RSS during the second) in MiB, fresh process (Linux)."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(config)], capture_output=True, text=True, check=True, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    before, first, _, second = map(float, out.stdout.split()[-4:])
    return before, first, second


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot(results: dict, path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (variant, runs) in enumerate(results.items()):
        color = f"C{i}"
        rewards = np.array([r["reward"] for r in runs])  # (seeds, steps)
        steps = np.arange(1, rewards.shape[1] + 1)
        ax_r.plot(steps, smooth(rewards.mean(0).tolist(), window), color=color, label=variant)
        ax_r.plot(steps, rewards.mean(0), color=color, alpha=0.25)
        acc = np.array([r["eval_accuracy"] for r in runs])
        ax_e.plot(runs[0]["eval_steps"], acc.mean(0), "o-", color=color, label=variant)
        if len(runs) > 1:
            ax_e.fill_between(runs[0]["eval_steps"], acc.min(0), acc.max(0), color=color, alpha=0.15)
    ax_r.set(
        xlabel="RL step", ylabel="training reward (fraction of blanks right)", title=f"reward ({window}-step mean)"
    )
    ax_e.set(xlabel="RL step", ylabel="greedy accuracy", title="evaluation (128 fixed puzzles)")
    for ax in (ax_r, ax_e):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for all runs")
    parser.add_argument("--quick", action="store_true", help="3 steps, one seed, to check the script")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.eval_every = 3, [0], 3
    sys.path.insert(0, str(ROOT))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {v: ROOT / "configs" / "language" / VARIANTS[v] for v in args.variants}
    results = {v: [run_variant(configs[v], s, args.steps, args.eval_every, args.overrides) for s in args.seeds]
               for v in args.variants}  # fmt: skip
    window = max(1, args.steps // 10)
    figures = {}
    for variant, runs in results.items():
        rewards = np.array([r["reward"] for r in runs])
        acc = np.array([r["eval_accuracy"] for r in runs])
        figures[f"{variant}/reward_first_{window}"] = float(rewards[:, :window].mean())
        figures[f"{variant}/reward_last_{window}"] = float(rewards[:, -window:].mean())
        figures[f"{variant}/eval_accuracy_start"] = float(acc[:, 0].mean())
        figures[f"{variant}/eval_accuracy_end"] = float(acc[:, -1].mean())
        figures[f"{variant}/eval_accuracy_best"] = float(acc.max(1).mean())
        figures[f"{variant}/seconds_per_step"] = float(np.mean([r["seconds_per_step"] for r in runs]))
    before, first, second = peak_memory_mb(configs[args.variants[-1]])
    figures["memory/rss_mb_before_first_step"] = before
    figures["memory/peak_rss_mb_first_step"] = first
    figures["memory/peak_rss_mb_second_step"] = second
    figures["memory/first_step_extra_mb"] = first - before
    report = {
        "name": "sudoku_rl",
        "figures": figures,
        "reference": "the same tiny SFT base at step 0 and FPO without the DiPOD term",
        "quick": args.quick,
        "settings": {
            "steps": args.steps,
            "seeds": args.seeds,
            "eval_every": args.eval_every,
            "overrides": args.overrides,
        },
        "curves": results,
    }
    (out / "sudoku_rl.json").write_text(json.dumps(report, indent=1))
    plot(results, out / "sudoku_rl.png", window)
    for key, value in figures.items():
        print(f"{key}: {value:.4f}")
    return report


if __name__ == "__main__":
    main()
