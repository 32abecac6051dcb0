"""Compare run directories: group by variant and seed, plot curves, write a markdown table.

A variant is the objective, its DiPOD weight, and for control the self-distillation stage (and a
Gaussian policy baseline); runs that differ only in ``seed`` are seeds of one variant. Runs are
grouped first by experiment (domain and task or environment), so a report over mixed runs keeps
language and control apart.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dipod.diagnostics.plots import Series, plot_metric
from dipod.runs.metrics import read_metrics

OBJECTIVE_LABELS = {"fpo": "FPO", "fpo_pp": "FPO++", "spg": "SPG", "diffu_grpo": "diffu-GRPO"}

PLOTTED = {
    "reward_mean": "training reward (rollout mean per {reward_unit})",
    "eval/accuracy": "held-out accuracy",
    "eval/return": "evaluation return (episode mean)",
    "episode_return": "training episode return",
    "elbo_mean": "ELBO estimate of rollout samples",
    "drift/gap": "log-likelihood − ELBO (nats)",
    "drift/grad_cosine": "cos(proxy grad, true PG)",
    "health/effective_tokens": "effective tokens per completion",
    "dipod_beta": "DiPOD weight β in force",
}


@dataclass
class RunRecord:
    """One run directory, read back."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    """summary.json (empty for a run that never wrote one)."""

    @property
    def collapsed_at(self) -> int | None:
        """The training step at which the collapse alarm first fired, None if it never did."""
        health = self.summary.get("health") or {}
        return health.get("step") if health.get("collapsed") else None

    @property
    def experiment(self) -> str:
        domain = self.config["domain"]
        section = self.config.get(domain) or {}
        return f"{domain}-{section.get('task') or section.get('env') or 'run'}"

    @property
    def variant(self) -> str:
        objective = self.config.get("objective", {})
        name = objective.get("name", "?")
        section = self.config.get("control") or {}
        label = "Gaussian PPO" if section.get("policy") == "gaussian" else OBJECTIVE_LABELS.get(name, name)
        kl = objective.get("kl_beta", 0.0)
        if kl:
            label += f" + ref ({objective.get('kl_type', 'elbo_difference')} {kl:g})"
        beta = objective.get("dipod_beta", 0.0)
        adaptive = self.config.get("adaptive_beta")
        if adaptive:
            label += f" + DiPOD (adaptive β from {beta:g}, gap budget {adaptive.get('budget'):g})"
        elif beta:
            scale = objective.get("dipod_scale", "sum")
            label += f" + DiPOD (β={beta:g}{'' if scale == 'sum' else ', ' + scale})"
        if (section.get("self_distill_iterations") or 0) > 0:
            label += " + self-distill"
        sampler = (self.config.get("language") or {}).get("sampler") or {}
        if sampler.get("remasking") == "threshold":
            label += f", threshold-{sampler.get('threshold', 0.9):g} rollouts"
        return label

    @property
    def reward_unit(self) -> str:
        return "completion" if self.config["domain"] == "language" else "env step"

    @property
    def sample_unit(self) -> str:
        return "completions" if self.config["domain"] == "language" else "env steps"

    def series(self, key: str) -> Series:
        points = [(r["samples"], r[key]) for r in self.rows if _finite(r.get(key)) and _finite(r.get("samples"))]
        x = np.array([p[0] for p in points], dtype=float)
        y = np.array([p[1] for p in points], dtype=float)
        return x, y

    def final(self, key: str) -> float | None:
        values = self.series(key)[1]
        return float(values[-1]) if len(values) else None

    def best(self, key: str) -> float | None:
        values = self.series(key)[1]
        return float(values.max()) if len(values) else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_run(path: str | Path) -> RunRecord:
    """Read DIR/config.yaml and DIR/metrics.jsonl; a missing file raises FileNotFoundError naming it."""
    path = Path(path)
    for name in ("config.yaml", "metrics.jsonl"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a run directory: {path / name} is missing")
    config = yaml.safe_load((path / "config.yaml").read_text())
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    return RunRecord(path, config, read_metrics(path / "metrics.jsonl"), summary)


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _collapses(runs: list[RunRecord]) -> str:
    """How many of the runs the collapse alarm flagged, and at which steps: "0/3", "2/3 (140, 310)"."""
    steps = sorted(r.collapsed_at for r in runs if r.collapsed_at is not None)
    return f"{len(steps)}/{len(runs)}" + (f" ({', '.join(map(str, steps))})" if steps else "")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _table(runs_by_variant: dict[str, list[RunRecord]]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    eval_keys = sorted(
        {k for runs in runs_by_variant.values() for r in runs for row in r.rows for k in row if k.startswith("eval/")}
    )
    header = [
        "variant", "seeds", "final reward", "best reward", "collapsed (step)", "final gap",
        *[f"final {k}" for k in eval_keys],
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    numbers: dict[str, dict[str, Any]] = {}
    for variant, runs in sorted(runs_by_variant.items()):
        columns = {
            "final reward": [r.final("reward_mean") for r in runs],
            "best reward": [r.best("reward_mean") for r in runs],
            "final gap": [r.final("drift/gap") for r in runs],
            **{f"final {k}": [r.final(k) for r in runs] for k in eval_keys},
        }
        seeds = sorted(r.config.get("seed", 0) for r in runs)
        stats = [_mean_std(v) for v in columns.values()]
        cells = [variant, f"{len(runs)} ({', '.join(map(str, seeds))})", *stats[:2], _collapses(runs), *stats[2:]]
        lines.append("| " + " | ".join(cells) + " |")
        collapsed = {str(r.config.get("seed", 0)): r.collapsed_at for r in runs}
        numbers[variant] = {"seeds": seeds, "runs": [str(r.path) for r in runs], "collapsed_at": collapsed, **columns}
    return lines, numbers


IGNORED_SETTINGS = ("seed", "name")
"""Top-level config keys that differ between the seeds of one variant by design."""


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to printed values of a nested config (lists and scalars as leaves)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if not prefix and key in IGNORED_SETTINGS:
            continue
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = f"{value:g}" if isinstance(value, float) else str(value)
    return flat


def split_by_settings(label: str, runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs that share a derived variant label but not their settings (an lr grid, say), as separate variants:
    the label plus each setting that differs within the group, e.g. ``FPO, optim.lr=1e-05``."""
    flats = [_flat(r.config) for r in runs]
    shared = sorted(set.intersection(*(set(f) for f in flats)))  # a key missing from older configs is no difference
    differing = [k for k in shared if len({f[k] for f in flats}) > 1]
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for run, flat in zip(runs, flats, strict=True):
        suffix = ", ".join(f"{k}={flat[k]}" for k in differing)
        groups[f"{label}, {suffix}" if suffix else label].append(run)
    return groups


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Plots (PNG) and report.md comparing ``run_dirs``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p) for p in run_dirs]
    experiments: dict[str, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        experiments[run.experiment][run.variant].append(run)
    for experiment, by_label in experiments.items():
        experiments[experiment] = {
            variant: group
            for label, runs_of in by_label.items()
            for variant, group in split_by_settings(label, runs_of).items()
        }

    written: list[Path] = []
    md = ["# dipod report", "", f"{len(runs)} runs. Values are mean ± std over seeds (sample std).", ""]
    numbers: dict[str, Any] = {}
    for experiment, by_variant in sorted(experiments.items()):
        first = next(iter(by_variant.values()))[0]
        unit = first.sample_unit
        colors = {label: f"C{i}" for i, label in enumerate(sorted(by_variant))}
        md += [f"## {experiment}", ""]
        lines, numbers[experiment] = _table(by_variant)
        md += [*lines, ""]
        for key, ylabel in PLOTTED.items():
            variants = {label: [r.series(key) for r in group] for label, group in by_variant.items()}
            variants = {label: [s for s in series if len(s[0])] for label, series in variants.items()}
            variants = {label: series for label, series in variants.items() if series}
            if not variants:
                continue
            png = plot_metric(
                variants,
                out_dir / f"{_slug(experiment)}_{_slug(key)}.png",
                title=f"{experiment}: {key}",
                xlabel=f"samples ({unit})",
                ylabel=ylabel.format(reward_unit=first.reward_unit),
                colors=colors,
            )
            written.append(png)
            md += [f"![{experiment} {key}]({png.name})", ""]
        md += ["Runs: " + ", ".join(f"`{r.path}`" for group in by_variant.values() for r in group), ""]
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "report.json").write_text(json.dumps(numbers, indent=2) + "\n")
    return [out_dir / "report.md", out_dir / "report.json", *written]
