"""Replay the collapse alarm over finished runs' metrics with other health settings: when would each run be flagged?

    PYTHONPATH=. python experiments/replay_alarm.py countdown_release --set zero_std_window=1 --set zero_std_window=10

The alarm is a pure function of the ``health/*`` signals each metrics row carries (``CollapseAlarm``), so runs
trained under one setting can be judged under another without training again. Prints one markdown table: a
row per run, a column per setting, each cell the step the run would be flagged at and the signals that fired.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dipod.config import HealthConfig  # noqa: E402
from dipod.diagnostics.health import CollapseAlarm, HealthSignals  # noqa: E402
from dipod.runs.metrics import read_metrics  # noqa: E402


def replay(rows: list[dict], cfg: HealthConfig) -> str:
    """ "step (signals)" where the alarm first fires on ``rows``, or "—"."""
    alarm = CollapseAlarm(cfg)
    for row in rows:
        signals = HealthSignals.from_metrics(row)
        if signals is None:
            continue
        report = alarm.update(signals)
        if report.fired:
            return f"{row['step']} ({', '.join(report.fired)})"
    return "—"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="experiment name: its runs are experiments/runs/<name>/*")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE of the health section, one per column")
    args = parser.parse_args(argv)
    settings = [dict([item.split("=", 1)]) for item in args.set] or [{}]
    configs = [HealthConfig(**{k: int(v) if v.isdigit() else float(v) for k, v in s.items()}) for s in settings]
    labels = [", ".join(f"{k}={v}" for k, v in s.items()) or "defaults" for s in settings]
    print("| run | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for run in sorted((ROOT / "experiments" / "runs" / args.name).iterdir()):
        if (run / "metrics.jsonl").is_file():
            rows = read_metrics(run / "metrics.jsonl")
            print(f"| {run.name} | " + " | ".join(replay(rows, cfg) for cfg in configs) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
