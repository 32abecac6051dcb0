"""Every dipod command through a subprocess on a tiny budget, with a fake trainer in place of the real ones.

tests/runs/fake_cli.py runs ``dipod.cli.main`` after replacing ``dipod.trainers.build_trainer``, so
these tests cover the command line, exit codes and files without training a model; the real
trainers are exercised in tests/runs/test_real_runs.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLI = ROOT / "tests" / "runs" / "fake_cli.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CONFIG = """\
domain: control
name: fake
seed: 3
train:
  steps: {steps}
  checkpoint_every: 3
  eval_every: 4
drift:
  every: 5
control: {{}}
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    return env


def dipod(*args: str, fake: bool = True, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(FAKE_CLI)] if fake else [sys.executable, "-m", "dipod.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=_env(**env), timeout=300)


def _config(tmp_path: Path, steps: int = 6) -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text(CONFIG.format(steps=steps))
    return path


def _rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def test_help_on_every_command():
    for command in ([], ["train"], ["sft"], ["eval"], ["report"], ["demo"]):
        result = dipod(*command, "--help", fake=False)
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
        assert "--resume" in result.stdout or command != ["train"]


def test_config_errors_exit_2_before_work(tmp_path):
    cfg = _config(tmp_path)
    result = dipod("train", cfg, "--set", "optim.lrr=0.1", "--out", tmp_path / "run", "--quiet")
    assert result.returncode == 2
    assert "unknown key `optim.lrr`" in result.stderr and "did you mean `optim.lr`" in result.stderr
    assert not (tmp_path / "run").exists()
    result = dipod("train", tmp_path / "missing.yaml", "--quiet")
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = dipod("train", cfg, "--set", "train.steps=-1", "--quiet", "--out", tmp_path / "run")
    assert result.returncode == 2 and "train.steps" in result.stderr


def test_train_eval_report(tmp_path):
    cfg = _config(tmp_path)
    run = tmp_path / "run"
    result = dipod("train", cfg, "--out", run, "--quiet", "--set", "objective.dipod_beta=0.05")
    assert result.returncode == 0, result.stderr
    assert "run finished" in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tb"):
        assert (run / name).exists(), name
    assert "dipod_beta: 0.05" in (run / "config.yaml").read_text()
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "eval/reward" in rows[3] and "drift/gap" in rows[4]

    again = dipod("train", cfg, "--out", run, "--quiet")
    assert again.returncode == 2 and "--resume" in again.stderr

    result = dipod("eval", run, "--quiet")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout.splitlines()[0])
    assert evaluated["step"] == 6 and evaluated["eval/reward"] == rows[-1]["eval/reward"]
    assert json.loads((run / "eval_step_00000006.json").read_text())["eval/reward"] == evaluated["eval/reward"]
    result = dipod("eval", run / "checkpoints" / "step_00000003.pt", "--out", tmp_path / "e3.json", "--quiet")
    assert result.returncode == 0 and json.loads((tmp_path / "e3.json").read_text())["step"] == 3

    result = dipod("report", run, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "| FPO + DiPOD (β=0.05) | 1 (3) |" in result.stdout
    pngs = list((tmp_path / "report").glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    assert dipod("report", tmp_path / "nothing", "--out", tmp_path / "r2").returncode == 1


def test_eval_of_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    result = dipod("eval", bad, "--quiet")
    assert result.returncode == 1 and str(bad) in result.stderr and "corrupt" in result.stderr


def test_nan_run_stops_with_message(tmp_path):
    result = dipod("train", _config(tmp_path, steps=30), "--out", tmp_path / "run", "--quiet",
                   "--set", "train.max_bad_steps=2", FAKE_NAN_FROM="4")
    assert result.returncode == 1
    assert "stopped at step 5: 2 consecutive steps" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "stopped"


def _wait_for_rows(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {count} rows")


def test_sigkill_then_resume_is_bit_for_bit(tmp_path):
    steps = 24
    cfg = _config(tmp_path, steps=steps)
    full = tmp_path / "full"
    assert dipod("train", cfg, "--out", full, "--quiet").returncode == 0
    rng = random.Random(7)
    part = tmp_path / "part"
    for _ in range(2):  # killed twice, at random points
        kill_after = rng.randint(1, steps - 2)
        cmd = [sys.executable, str(FAKE_CLI), "train", str(cfg), "--out", str(part), "--quiet", "--resume"]
        proc = subprocess.Popen(cmd, env=_env(FAKE_DELAY_S="0.03"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for_rows(part / "metrics.jsonl", kill_after, proc)
        time.sleep(rng.random() * 0.05)  # somewhere inside a step
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = dipod("train", cfg, "--out", part, "--quiet", "--resume")
    assert result.returncode == 0, result.stderr
    assert _rows(part) == _rows(full)


def test_sigint_writes_checkpoint(tmp_path):
    cfg = _config(tmp_path, steps=200)
    run = tmp_path / "run"
    cmd = [sys.executable, str(FAKE_CLI), "train", str(cfg), "--out", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, env=_env(FAKE_DELAY_S="0.03"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_rows(run / "metrics.jsonl", 4, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after step" in err
    rows = _rows(run)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[-1] == f"step_{rows[-1]['step']:08d}.pt"  # the interrupted step is checkpointed


@pytest.mark.parametrize("command", [["sft"], ["train"]])
def test_sft_and_train_reject_bad_config_file(tmp_path, command):
    path = tmp_path / "bad.yaml"
    path.write_text("domain: language\nlanguage: {}\nobjective: {name: fpo_pp}\n")
    result = dipod(*command, path, "--quiet")
    assert result.returncode == 2 and "objective.name" in result.stderr
