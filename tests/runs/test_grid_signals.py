"""Stopping cleanly on a signal: the interrupt flag's counting, and a process-pool grid stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from dipod.runs.interrupt import InterruptFlag
from dipod.runs.metrics import read_metrics
from tests.runs.cli_helpers import ROOT, cli_env, wait_for_rows

FAKE_GRID = ROOT / "tests" / "runs" / "fake_grid.py"


def test_a_repeat_within_a_second_counts_once_and_a_later_signal_aborts(monkeypatch):
    said, forwarded = [], []
    with InterruptFlag(said.append, forward=forwarded.append) as interrupt:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # a process group's signal, then its parent's copy
        assert interrupt.raised and len(said) == 1 and forwarded == [signal.SIGTERM]
        monkeypatch.setattr(InterruptFlag, "SAME_SIGNAL_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert forwarded == [signal.SIGTERM, signal.SIGINT]  # the abort is passed on too
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _grid(out, steps: int, **env: str) -> subprocess.Popen:
    """Three fake runs on two workers, in a session of their own (so the test can signal the group)."""
    cmd = [sys.executable, str(FAKE_GRID), str(out), "3", str(steps)]
    return subprocess.Popen(cmd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)  # fmt: skip


@pytest.mark.parametrize("to", ["grid process", "process group"])
def test_sigterm_stops_a_pool_grid_after_checkpoints_and_a_rerun_finishes_it(tmp_path, to):
    steps = 200
    proc = _grid(tmp_path, steps, FAKE_DELAY_S="0.05")
    try:
        for run in ("run0", "run1"):
            assert wait_for_rows(tmp_path / run / "metrics.jsonl", 2, proc), proc.communicate()[1]
        (os.kill if to == "grid process" else os.killpg)(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert json.loads(out) == ["interrupted", "interrupted", "not started"]  # the workers checkpointed, once
    assert not (tmp_path / "run2").exists()  # and took no further run
    for run in ("run0", "run1"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["status"] == "interrupted" and 2 <= summary["step"] < steps
    again = _grid(tmp_path, steps)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert json.loads(out) == ["completed"] * 3
    for run in ("run0", "run1", "run2"):
        assert [r["step"] for r in read_metrics(tmp_path / run / "metrics.jsonl")] == list(range(1, steps + 1))
