"""Tables of the control fine-tuning experiments (``experiments/specs/{hopper,walker2d}_finetune.yaml``).

Evaluation returns of 8 episodes are noisy, so besides the final one the table gives the mean of the last three
evaluations and of all evaluations after the start (the area under the curve per step) and the worst evaluation
(the dip a fine-tuning run may take before it improves). The gap columns come from ``finetune_probe.py`` (run it
first): the weighted gap on 1,024 of the final policy's own (state, action) pairs, and the self-distillation
stage's gap before and after it. Differences are paired by seed against plain FPO++ (each seed's variants start
from the same clone and evaluate on the same episodes).

    PYTHONPATH=. python experiments/finetune_probe.py hopper_finetune walker2d_finetune
    PYTHONPATH=. python experiments/finetune_table.py hopper_finetune walker2d_finetune
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fpo_pp": "FPO++",
    "fpo_pp_selfdistill": "FPO++ + self-distillation",
    "fpo_pp_dipod": "FPO++ + DiPOD (β = 0.05)",
    "fpo_pp_selfdistill_dipod": "FPO++ + both",
}


def run_figures(run_dir: Path) -> dict[str, float]:
    """One run's figures from its metrics.jsonl."""
    from dipod.runs.metrics import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    evals = [r["eval/return"] for r in rows if "eval/return" in r]
    trained = [r["episode_return"] for r in rows if "episode_return" in r][-5:]
    return {
        "start": evals[0],
        "final": evals[-1],
        "last3": statistics.mean(evals[-3:]),
        "mean": statistics.mean(evals[1:]),
        "worst": min(evals[1:]),
        "train": statistics.mean(trained),
    }


def _cell(values: list[float], digits: int = 0) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(name: str) -> str:
    runs = ROOT / "experiments" / "runs" / name
    figures: dict[str, dict[int, dict[str, float]]] = {}
    for variant in VARIANTS:
        for run_dir in sorted(runs.glob(f"{variant}-seed*")):
            summary = run_dir / "summary.json"
            done = summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"
            if done and run_dir.name.rsplit("-seed", 1)[0] == variant:
                figures.setdefault(variant, {})[int(run_dir.name.rsplit("seed", 1)[1])] = run_figures(run_dir)
    base = figures.get("fpo_pp", {})
    probe_file = ROOT / "experiments" / "results" / name / "own_sample_gap.json"
    probed = json.loads(probe_file.read_text()) if probe_file.is_file() else {}
    gaps = {k: v["gap"] for k, v in probed.items() if "gap" in v}
    clone = [v for k, v in gaps.items() if k.startswith("clone-")]
    lines = [
        f"{name} (`PYTHONPATH=. python experiments/finetune_table.py {name}`):",
        "",
        "| variant | seeds | clone (step 0) | worst eval | mean eval | last 3 evals | final eval | Δ last 3 vs FPO++ "
        "(paired) | training return | own-sample gap at the end (nats) | Δ gap vs FPO++ (paired) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, label in VARIANTS.items():
        runs_ = figures.get(variant, {})
        if not runs_:
            continue
        col = {key: [f[key] for f in runs_.values()] for key in next(iter(runs_.values()))}
        paired = [f["last3"] - base[s]["last3"] for s, f in runs_.items() if s in base]
        gap = [gaps[f"{variant}-seed{s}"] for s in runs_ if f"{variant}-seed{s}" in gaps]
        gap_paired = [gaps[f"{variant}-seed{s}"] - gaps[f"fpo_pp-seed{s}"] for s in runs_
                      if f"{variant}-seed{s}" in gaps and f"fpo_pp-seed{s}" in gaps]  # fmt: skip
        lines.append(
            f"| {label} | {len(runs_)} | {_cell(col['start'])} | {_cell(col['worst'])} | {_cell(col['mean'])} | "
            f"{_cell(col['last3'])} | {_cell(col['final'])} | {'—' if variant == 'fpo_pp' else _cell(paired)} | "
            f"{_cell(col['train'])} | {_cell(gap, 2)} | {'—' if variant == 'fpo_pp' else _cell(gap_paired, 2)} |"
        )
    stage = [v for k, v in probed.items() if k.startswith("stage-")]
    lines += [
        "",
        f"The clone's own-sample gap: {_cell(clone, 2)} nats. The self-distillation stage alone (from the clone, "
        f"3 seeds): {_cell([s['gap_before'] for s in stage], 2)} before, {_cell([s['gap_after'] for s in stage], 2)} "
        "after (on the stage's first teacher batch).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    for name in argv or ["hopper_finetune", "walker2d_finetune"]:
        print(table(name))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
