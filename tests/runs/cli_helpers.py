"""Running the dipod command in subprocesses: plain, with the fake trainer, and killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE_CLI = ROOT / "tests" / "runs" / "fake_cli.py"


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def dipod_command(fake: bool) -> list[str]:
    return [sys.executable, str(FAKE_CLI)] if fake else [sys.executable, "-m", "dipod.cli"]


def dipod(*args: object, fake: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run ``dipod ARGS`` to completion and capture its output."""
    cmd = [*dipod_command(fake), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(**env), timeout=300, cwd=ROOT)


def untimed(metrics: dict) -> dict:
    """``metrics`` without its wall-clock figures (time_s, time/*, drift/seconds): what a rerun reproduces."""
    return {k: v for k, v in metrics.items() if k not in ("time_s", "drift/seconds") and not k.startswith("time/")}


def rows_without_time(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [untimed(json.loads(line)) for line in lines]


def wait_for_rows(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until ``path`` has ``count`` lines; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"{path} did not reach {count} rows in {timeout} s")


def kill_during_run(
    args: list[object], run_dir: Path, after_rows: int, *, fake: bool, extra_sleep: float = 0.0, **env: str
) -> bool:
    """Start ``dipod ARGS``, SIGKILL it once ``after_rows`` metrics rows exist; whether it was killed."""
    cmd = [*dipod_command(fake), *map(str, args)]
    proc = subprocess.Popen(cmd, env=cli_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    reached = wait_for_rows(Path(run_dir) / "metrics.jsonl", after_rows, proc)
    if reached:
        time.sleep(extra_sleep)
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return reached and proc.returncode == -signal.SIGKILL
