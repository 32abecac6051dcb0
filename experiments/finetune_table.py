"""Tables of the control fine-tuning experiments (``experiments/specs/{hopper,walker2d}_finetune.yaml``).

Evaluation returns of 8 episodes are noisy, so besides the final one the table gives the mean of the last three
evaluations and of all evaluations after the start (the area under the curve per step), the worst evaluation
(the dip a fine-tuning run may take before it improves), the drift probe's weighted gap and gradient cosine
averaged over the run's probes, and the self-distillation stage's gap before and after it. Differences are paired
by seed against plain FPO++ (each seed's variants start from the same clone and evaluate on the same episodes).

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
    probes = [r for r in rows if "drift/gap" in r]
    trained = [r["episode_return"] for r in rows if "episode_return" in r][-5:]
    first = next((r for r in rows if "self_distill/gap_before" in r), {})
    return {
        "start": evals[0],
        "final": evals[-1],
        "last3": statistics.mean(evals[-3:]),
        "mean": statistics.mean(evals[1:]),
        "worst": min(evals[1:]),
        "train": statistics.mean(trained),
        "gap": statistics.mean(r["drift/gap"] for r in probes),
        "cosine": statistics.mean(r["drift/grad_cosine"] for r in probes),
        "invertible": statistics.mean(r.get("drift/invertible_frac", 1.0) for r in probes),
        "sd_before": first.get("self_distill/gap_before", float("nan")),
        "sd_after": first.get("self_distill/gap_after", float("nan")),
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
    lines = [
        f"{name} (`PYTHONPATH=. python experiments/finetune_table.py {name}`):",
        "",
        "| variant | seeds | clone (step 0) | worst eval | mean eval | last 3 evals | final eval | Δ last 3 vs FPO++ "
        "(paired) | training return | weighted gap (mean over probes) | grad cosine | gap before → after "
        "self-distillation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, label in VARIANTS.items():
        runs_ = figures.get(variant, {})
        if not runs_:
            continue
        col = {key: [f[key] for f in runs_.values()] for key in next(iter(runs_.values()))}
        paired = [f["last3"] - base[s]["last3"] for s, f in runs_.items() if s in base]
        sd = "—" if "selfdistill" not in variant else f"{_cell(col['sd_before'], 2)} → {_cell(col['sd_after'], 2)}"
        lines.append(
            f"| {label} | {len(runs_)} | {_cell(col['start'])} | {_cell(col['worst'])} | {_cell(col['mean'])} | "
            f"{_cell(col['last3'])} | {_cell(col['final'])} | {'—' if variant == 'fpo_pp' else _cell(paired)} | "
            f"{_cell(col['train'])} | {_cell(col['gap'], 2)} | {_cell(col['cosine'], 2)} | {sd} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    for name in argv or ["hopper_finetune", "walker2d_finetune"]:
        print(table(name))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
