"""The experiment runner: a spec's variants x seeds train through the one loop and are summarised."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import run as experiments  # noqa: E402  (experiments/run.py)


def test_smoke_spec_runs_resumes_and_summarises(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(experiments, "RESULTS", tmp_path / "results")
    spec = ROOT / "experiments" / "specs" / "smoke.yaml"
    assert experiments.main([str(spec), "--jobs", "1"]) == 0
    summary = json.loads((tmp_path / "results" / "smoke" / "summary.json").read_text())
    assert set(summary["runs"]) == {"release_fpo-seed0", "release_fpo_dipod-seed0"}
    assert all(run["status"] == "completed" and run["step"] == 2 for run in summary["runs"].values())
    assert "collapsed (step)" in (tmp_path / "results" / "smoke" / "report.md").read_text()
    before = (tmp_path / "runs" / "smoke" / "release_fpo-seed0" / "metrics.jsonl").read_text()
    assert experiments.main([str(spec), "--jobs", "1"]) == 0  # finished runs are kept, not trained again
    assert (tmp_path / "runs" / "smoke" / "release_fpo-seed0" / "metrics.jsonl").read_text() == before


def test_a_bad_variant_names_the_spec_and_the_key(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\nseeds: [0]\nvariants:\n  v: {config: configs/language/sudoku_fpo.yaml, set: [objective.clip=1]}\n"
    )
    with pytest.raises(ValueError, match=r"(?s)bad.yaml, variant 'v'.*unknown key `objective.clip`"):
        experiments.load_spec(spec)
