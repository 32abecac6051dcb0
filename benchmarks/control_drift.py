"""Pendulum: FPO++ vs FPO++ after self-distillation vs FPO++ with the per-step DiPOD term, with drift probes.

Runs the given control configs over seeds with ``ControlTrainer``, calling ``trainer.drift_probe()``
(exact Euler log-likelihood vs the CFM ELBO surrogate, gradient cosine) every ``--every`` steps,
and logs one JSON row per step to ``benchmarks/results/control_drift_runs/<name>_seed<k>.jsonl``.
Runs already logged elsewhere (``--external DIR``: JSONL files with ``samples`` and
``episode_return``, e.g. the Pendulum FPO++ / + DiPOD runs of benchmarks/pendulum.py) join the
return comparison without being re-run.

    PYTHONPATH=. OMP_NUM_THREADS=1 nohup python benchmarks/control_drift.py \
        --configs configs/control/pendulum_fpo_pp_selfdistill.yaml --seeds 0 1 2 > control_drift.log 2>&1 &
    PYTHONPATH=. python benchmarks/control_drift.py --summarise-only --external DIR_OF_PENDULUM_RUNS

Writes benchmarks/results/control_drift.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "control_drift_runs"


def train_with_probe(config: str, seed: int, env_steps: int, every: int, overrides: list[str]) -> Path:
    """One run; returns its JSONL log."""
    import torch

    from dipod.runs.config import load_config
    from dipod.control.trainer import ControlTrainer

    torch.set_num_threads(1)
    cfg = load_config(config, [*overrides, f"seed={seed}"])
    trainer = ControlTrainer(cfg)
    log_path = RUNS / f"{cfg.name}_seed{seed}.jsonl"
    RUNS.mkdir(parents=True, exist_ok=True)
    start, probe_s = time.perf_counter(), 0.0
    with log_path.open("w") as log:
        while trainer.samples < env_steps:
            row = {**trainer.train_step(), "step": trainer.step, "samples": trainer.samples}
            if every and trainer.step % every == 0:
                t0 = time.perf_counter()
                row.update(trainer.drift_probe())
                probe_s += time.perf_counter() - t0
            row["time_s"] = time.perf_counter() - start
            row["probe_s"] = probe_s
            log.write(json.dumps(row) + "\n")
            log.flush()
    trainer.close()
    return log_path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_std(values: list[float]) -> list[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return [float("nan"), float("nan")]
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return [m, s]


def summarise(paths: list[Path], env_steps: int) -> dict:
    """Per variant (file name before ``_seed``): final return, drift statistics, mean +- std over seeds.

    Runs are cut at the smallest of ``env_steps`` and the shortest length among variants with at least
    3 seeds, so that every such run (some may still be going) is compared at the same budget; single-
    seed drift runs do not move that point. ``compared_at`` records it.
    """
    logs = [(path, _read(path)) for path in paths]
    logs = [(path, rows) for path, rows in logs if rows]
    seeds_of: dict[str, int] = {}
    for path, _ in logs:
        seeds_of[path.stem.rsplit("_seed", 1)[0]] = seeds_of.get(path.stem.rsplit("_seed", 1)[0], 0) + 1
    lengths = [rows[-1]["samples"] for path, rows in logs if seeds_of[path.stem.rsplit("_seed", 1)[0]] >= 3]
    env_steps = min([env_steps, *lengths])
    variants: dict[str, list[list[dict]]] = {}
    for path, rows in logs:
        rows = [r for r in rows if r.get("samples", 0) <= env_steps]
        if rows:
            variants.setdefault(path.stem.rsplit("_seed", 1)[0], []).append(rows)
    out = {}
    for name, runs in sorted(variants.items()):

        def last(rows: list[dict], key: str) -> float | None:
            vals = [r[key] for r in rows if key in r]
            return vals[-1] if vals else None

        def mean_of(rows: list[dict], key: str) -> float | None:
            vals = [r[key] for r in rows if key in r]
            return sum(vals) / len(vals) if vals else None

        out[name] = {
            "seeds": len(runs),
            "env_steps": [runs_i[-1]["samples"] for runs_i in runs],
            "final_return": _mean_std([last(r, "episode_return") for r in runs]),
            "final_gap": _mean_std([last(r, "drift/gap") for r in runs]),
            "gap_change": _mean_std(
                [
                    (last(r, "drift/gap") - next(x["drift/gap"] for x in r if "drift/gap" in x))
                    if last(r, "drift/gap") is not None
                    else None
                    for r in runs
                ]
            ),
            "mean_grad_cosine": _mean_std([mean_of(r, "drift/grad_cosine") for r in runs]),
            "final_grad_cosine": _mean_std([last(r, "drift/grad_cosine") for r in runs]),
            "probe_fraction": _mean_std(
                [r[-1]["probe_s"] / r[-1]["time_s"] if "probe_s" in r[-1] and r[-1]["time_s"] else None for r in runs]
            ),
        }
    return {
        "compared_at": env_steps,
        "variants": out,
        "runs": {
            name: [[{k: row[k] for k in row if k in KEEP} for row in r] for r in runs]
            for name, runs in variants.items()
        },
    }


KEEP = ("step", "samples", "episode_return", "drift/gap", "drift/grad_cosine", "drift/elbo", "drift/loglik")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (name, runs) in zip(colors, summary["runs"].items(), strict=False):
        for i, rows in enumerate(runs):
            for ax, key in zip(axes, ("episode_return", "drift/gap", "drift/grad_cosine"), strict=True):
                pts = [(r["samples"], r[key]) for r in rows if key in r]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, color=color, alpha=0.8, lw=1, label=name if i == 0 else None)
    for ax, label in zip(
        axes,
        ("training episode return", "drift/gap (Euler loglik - CFM ELBO surrogate)", "drift/grad_cosine"),
        strict=True,
    ):
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Pendulum-v1, one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(summary: dict) -> str:
    keys = ("final_return", "final_gap", "gap_change", "mean_grad_cosine", "final_grad_cosine", "probe_fraction")
    lines = ["| variant | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, v in summary["variants"].items():
        cells = [f"{v[k][0]:.3f} ± {v[k][1]:.3f}" for k in keys]
        lines.append(f"| {name} | {v['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_config = str(ROOT / "configs/control/pendulum_fpo_pp_selfdistill.yaml")
    parser.add_argument("--configs", nargs="*", default=[default_config])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=10, help="drift probe interval (steps)")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--external", nargs="*", default=[], help="dirs of JSONL runs to include in the summary")
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    if not args.summarise_only:
        for config in args.configs:
            for seed in args.seeds:
                print("done", train_with_probe(config, seed, args.env_steps, args.every, args.overrides), flush=True)
    paths = sorted(RUNS.glob("*.jsonl")) + [p for d in args.external for p in sorted(Path(d).glob("*.jsonl"))]
    summary = summarise(paths, args.env_steps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "control_drift.json").write_text(json.dumps(summary))
    plot(summary, RESULTS / "control_drift.png")
    print(f"compared at {summary['compared_at']} env steps\n" + table(summary))


if __name__ == "__main__":
    main()
