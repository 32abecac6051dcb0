"""Return-vs-env-steps experiments: run configs over seeds, log JSONL curves, summarise, plot.

Used by ``benchmarks/pendulum.py`` and ``benchmarks/halfcheetah.py``. Each run appends one JSON row
per training step to its log file (so a long run can be watched and survives interruption), and the
summary holds every run's curve of the training episode return (mean of the last finished episodes).
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dipod.runs.config import RunConfig, load_config


def run_curve(cfg: RunConfig, env_steps: int, log_path: Path, *, eval_at_end: bool = True) -> dict:
    """Train until ``env_steps`` env steps; returns the curve (samples, episode_return) and timings.

    With ``cfg.drift.every`` > 0 (flow policies) the drift probe (ELBO, exact log-likelihood, gap,
    gradient cosine) is logged every that many steps.
    """
    import torch

    from dipod.control.trainer import ControlTrainer

    torch.set_num_threads(1)
    trainer = ControlTrainer(cfg)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    samples, returns, drift, elbo = [], [], [], []
    every = cfg.drift.every if cfg.control is not None and cfg.control.policy == "flow" else 0
    start = time.perf_counter()
    with log_path.open("w") as log:
        while trainer.samples < env_steps:
            metrics = trainer.train_step()
            if every and trainer.step % every == 0:
                probe = trainer.drift_probe()
                metrics.update(probe)
                drift.append({"samples": trainer.samples, **probe})
            row = {"step": trainer.step, "samples": trainer.samples, "time_s": time.perf_counter() - start, **metrics}
            log.write(json.dumps(row) + "\n")
            log.flush()
            elbo.append(metrics.get("elbo_mean", math.nan))  # absent when every update was skipped
            if "episode_return" in metrics:
                samples.append(trainer.samples)
                returns.append(metrics["episode_return"])
    result = {
        "name": cfg.name,
        "seed": cfg.seed,
        "samples": samples,
        "episode_return": returns,
        "env_steps": trainer.samples,
        "wall_s": time.perf_counter() - start,
        "self_distill_s": trainer.self_distill_time_s,
        "drift": drift,
        "elbo_mean": elbo,
    }
    if eval_at_end:
        result.update(trainer.evaluate())
    trainer.close()
    return result


def _job(args: tuple[str, list[str], int, str]) -> dict:
    config, overrides, env_steps, log_path = args
    cfg = load_config(config, overrides)
    return run_curve(cfg, env_steps, Path(log_path))


def run_grid(
    configs: list[str], seeds: list[int], env_steps: int, out_dir: Path, *, jobs: int = 1, overrides: list[str] = ()
) -> list[dict]:
    """Every config x seed, ``jobs`` processes at a time; logs go to out_dir/<name>_seed<k>.jsonl."""
    tasks = []
    for config in configs:
        name = load_config(config, list(overrides)).name
        for seed in seeds:
            log = out_dir / f"{name}_seed{seed}.jsonl"
            tasks.append((config, [*overrides, f"seed={seed}"], env_steps, str(log)))
    if jobs == 1:
        return [_job(t) for t in tasks]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_job, tasks))


def smoothed_curve(samples: list[int], values: list[float], grid: np.ndarray) -> np.ndarray:
    """values interpolated onto ``grid`` (env steps); NaN before the first finished episode."""
    if not samples:
        return np.full(grid.shape, np.nan)
    out = np.interp(grid, samples, values)
    out[grid < samples[0]] = np.nan
    return out


def _tail_mean(series: list[list[float]]) -> float | None:
    tails = [np.mean(x[-max(1, len(x) // 10) :]) for x in series if x]
    return float(np.mean(tails)) if tails else None


def summarise(results: list[dict], *, threshold: float | None = None, points: int = 100) -> dict:
    """Per variant: final return mean/std over seeds, env steps to reach ``threshold``, mean curve."""
    variants: dict[str, list[dict]] = {}
    for r in results:
        variants.setdefault(r["name"], []).append(r)
    summary = {}
    for name, runs in variants.items():
        max_steps = max(r["env_steps"] for r in runs)
        grid = np.linspace(0, max_steps, points)
        curves = np.stack([smoothed_curve(r["samples"], r["episode_return"], grid) for r in runs])
        finals = [r["episode_return"][-1] for r in runs if r["episode_return"]]
        entry = {
            "seeds": [r["seed"] for r in runs],
            "env_steps": [r["env_steps"] for r in runs],
            "final_return_mean": float(np.mean(finals)),
            "final_return_std": float(np.std(finals)),
            "eval_return": [r.get("eval/return") for r in runs],
            "wall_s": [r["wall_s"] for r in runs],
            # Mean training ELBO surrogate (-CFM on the rollout's own actions) over each run's last 10% of steps.
            "final_elbo_mean": _tail_mean([r.get("elbo_mean", []) for r in runs]),
            "grid": grid.tolist(),
            "mean_curve": np.nanmean(curves, axis=0).tolist() if np.isfinite(curves).any() else [],
        }
        if threshold is not None:
            mean_curve = np.nanmean(curves, axis=0)
            hit = np.flatnonzero(mean_curve >= threshold)
            entry["steps_to_threshold"] = float(grid[hit[0]]) if hit.size else None
        summary[name] = entry
    return summary


def plot_curves(results: list[dict], path: Path, *, title: str, threshold: float | None = None) -> None:
    """PNG of episode return vs env steps: thin lines per seed, thick mean per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = sorted({r["name"] for r in results})
    for color, name in zip(colors, names, strict=False):
        runs = [r for r in results if r["name"] == name]
        grid = np.linspace(0, max(r["env_steps"] for r in runs), 100)
        curves = []
        for r in runs:
            ax.plot(r["samples"], r["episode_return"], color=color, alpha=0.25, lw=0.8)
            curves.append(smoothed_curve(r["samples"], r["episode_return"], grid))
        ax.plot(grid, np.nanmean(np.stack(curves), axis=0), color=color, lw=2, label=f"{name} ({len(runs)} seeds)")
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"goal {threshold:g}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return (training, last 20 episodes)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_from_logs(paths: list[Path]) -> list[dict]:
    """Rebuild run results from per-step JSONL logs (``<name>_seed<k>.jsonl``), e.g. of an unfinished run."""
    results = []
    for path in paths:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        name, _, seed = path.stem.rpartition("_seed")
        curve = [(r["samples"], r["episode_return"]) for r in rows if "episode_return" in r]
        drift_keys = ("drift/elbo", "drift/loglik", "drift/gap", "drift/grad_cosine")
        results.append(
            {
                "name": name,
                "seed": int(seed),
                "samples": [s for s, _ in curve],
                "episode_return": [v for _, v in curve],
                "env_steps": rows[-1]["samples"] if rows else 0,
                "wall_s": rows[-1]["time_s"] if rows else 0.0,
                "elbo_mean": [r["elbo_mean"] for r in rows if "elbo_mean" in r],
                "drift": [{"samples": r["samples"], **{k: r[k] for k in drift_keys}} for r in rows if "drift/gap" in r],
                "from_log": str(path),
            }
        )
    return results


def plot_drift(results: list[dict], path: Path, *, title: str) -> bool:
    """PNG of the drift probe (gap log pi - ELBO surrogate, gradient cosine) vs env steps; False if none logged."""
    runs = [r for r in results if r.get("drift")]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_gap, ax_cos) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = sorted({r["name"] for r in runs})
    for color, name in zip(colors, names, strict=False):
        for i, r in enumerate(x for x in runs if x["name"] == name):
            steps = [d["samples"] for d in r["drift"]]
            label = name if i == 0 else None
            ax_gap.plot(steps, [d["drift/gap"] for d in r["drift"]], color=color, alpha=0.8, label=label)
            ax_cos.plot(steps, [d["drift/grad_cosine"] for d in r["drift"]], color=color, alpha=0.8, label=label)
    ax_gap.set_ylabel("drift/gap: exact Euler log pi - (-CFM)")
    ax_cos.set_ylabel("drift/grad_cosine: proxy vs true PG")
    for ax in (ax_gap, ax_cos):
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def carry_evaluations(results: list[dict], previous: Path) -> None:
    """Keep the end-of-run evaluations of an earlier full run when re-summarising from logs."""
    if not previous.is_file():
        return
    evals = {(r["name"], r["seed"]): r for r in json.loads(previous.read_text()).get("runs", [])}
    for r in results:
        old = evals.get((r["name"], r["seed"]), {})
        r.update({k: v for k, v in old.items() if k.startswith("eval/")})
