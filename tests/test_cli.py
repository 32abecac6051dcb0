"""Every dipod command through a subprocess on a tiny budget, with a fake trainer in place of the real ones.

tests/runs/fake_cli.py runs ``dipod.cli.main`` after replacing ``dipod.trainers.build_trainer``, so
these tests cover the command line, exit codes and files without training a model; the real
trainers are exercised in tests/runs/test_real_runs.py.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dipod.runs.trainers as trainer_module
from dipod.cli import app
from tests.runs.cli_helpers import FAKE_CLI, ROOT, cli_env, dipod, kill_during_run, rows_without_time, wait_for_rows
from tests.runs.fake_trainer import FakeTrainer

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


def in_process(monkeypatch, *args: object, nan_from: int | None = None):
    """``dipod ARGS`` in this process (for error paths; signals and end-to-end runs use subprocesses)."""
    from typer.testing import CliRunner

    monkeypatch.setattr(trainer_module, "build_trainer", lambda cfg, device=None: FakeTrainer(cfg, nan_from=nan_from))
    return CliRunner().invoke(app, [str(a) for a in args])


def _config(tmp_path: Path, steps: int = 6) -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text(CONFIG.format(steps=steps))
    return path


def test_help_on_every_command():
    for command in ([], ["train"], ["sft"], ["eval"], ["report"], ["demo"]):
        result = dipod(*command, "--help", fake=False)
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
        assert "--resume" in result.stdout or command != ["train"]


def test_config_errors_exit_2_before_work(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    result = dipod("train", cfg, "--set", "optim.lrr=0.1", "--out", tmp_path / "run", "--quiet")
    assert result.returncode == 2
    assert "unknown key `optim.lrr`" in result.stderr and "did you mean `optim.lr`" in result.stderr
    assert not (tmp_path / "run").exists()
    result = in_process(monkeypatch, "train", tmp_path / "missing.yaml", "--quiet")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = in_process(monkeypatch, "train", cfg, "--set", "train.steps=-1", "--quiet", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "train.steps" in result.output
    assert not (tmp_path / "run").exists()


def test_train_eval_report(tmp_path):
    cfg = _config(tmp_path)
    run = tmp_path / "run"
    result = dipod("train", cfg, "--out", run, "--quiet", "--set", "objective.dipod_beta=0.05")
    assert result.returncode == 0, result.stderr
    assert "run finished" in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tb"):
        assert (run / name).exists(), name
    assert "dipod_beta: 0.05" in (run / "config.yaml").read_text()
    rows = rows_without_time(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "eval/reward" in rows[3] and "drift/gap" in rows[4]

    result = dipod("eval", run, "--quiet")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout.splitlines()[0])
    assert evaluated["step"] == 6 and evaluated["eval/reward"] == rows[-1]["eval/reward"]
    assert json.loads((run / "eval_step_00000006.json").read_text())["eval/reward"] == evaluated["eval/reward"]

    result = dipod("report", run, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "| FPO + DiPOD (β=0.05) | 1 (3) |" in result.stdout
    pngs = list((tmp_path / "report").glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)


def test_in_process_paths(tmp_path, monkeypatch):
    cfg = _config(tmp_path, steps=4)  # checkpoints after steps 3 and 4
    run = tmp_path / "run"
    assert in_process(monkeypatch, "train", cfg, "--out", run, "--quiet").exit_code == 0
    again = in_process(monkeypatch, "train", cfg, "--out", run, "--quiet")
    assert again.exit_code == 2 and "--resume" in again.output
    result = in_process(monkeypatch, "train", cfg, "--resume", "--quiet")
    assert result.exit_code == 2 and "need --out" in result.output
    result = in_process(monkeypatch, "eval", run / "checkpoints" / "step_00000003.pt", "--out", tmp_path / "e.json")
    assert result.exit_code == 0 and json.loads((tmp_path / "e.json").read_text())["step"] == 3
    assert "eval/reward" in result.output
    assert in_process(monkeypatch, "eval", tmp_path / "nothing").exit_code == 1
    newest = run / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:64])  # truncated: eval of the run dir falls back to step 3
    result = in_process(monkeypatch, "eval", run, "--quiet")
    assert result.exit_code == 0 and str(newest) in result.output and "falling back" in result.output
    assert '"step": 3' in result.output
    result = in_process(monkeypatch, "report", tmp_path / "nothing", "--out", tmp_path / "r2")
    assert result.exit_code == 1 and "not a run directory" in result.output


def test_eval_of_corrupt_checkpoint_names_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    result = in_process(monkeypatch, "eval", bad, "--quiet")
    assert result.exit_code == 1 and str(bad) in result.output and "corrupt" in result.output


def test_nan_run_stops_with_message(tmp_path, monkeypatch):
    cfg = _config(tmp_path, steps=30)
    args = ["train", cfg, "--out", tmp_path / "run", "--quiet", "--set", "train.max_bad_steps=2"]
    result = in_process(monkeypatch, *args, nan_from=4)
    assert result.exit_code == 1
    assert "stopped at step 5: 2 consecutive steps" in result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "stopped"


def test_sigkill_then_resume_is_bit_for_bit(tmp_path, monkeypatch):
    steps = 24
    cfg = _config(tmp_path, steps=steps)
    full = tmp_path / "full"
    assert in_process(monkeypatch, "train", cfg, "--out", full, "--quiet").exit_code == 0  # the reference
    rng = random.Random(7)
    part = tmp_path / "part"
    for _ in range(2):  # killed twice, at random points inside a step
        args = ["train", cfg, "--out", part, "--quiet", "--auto-resume"]  # the first start has nothing to resume
        killed = kill_during_run(
            args, part, rng.randint(1, steps - 2), fake=True, extra_sleep=rng.random() * 0.05, FAKE_DELAY_S="0.03"
        )
        assert killed
    result = dipod("train", cfg, "--out", part, "--quiet", "--resume")
    assert result.returncode == 0, result.stderr
    assert rows_without_time(part) == rows_without_time(full)


def test_sigint_writes_checkpoint(tmp_path):
    cfg = _config(tmp_path, steps=200)
    run = tmp_path / "run"
    cmd = [sys.executable, str(FAKE_CLI), "train", str(cfg), "--out", str(run), "--quiet"]
    proc = subprocess.Popen(
        cmd, env=cli_env(FAKE_DELAY_S="0.03"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert wait_for_rows(run / "metrics.jsonl", 4, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after step" in err
    rows = rows_without_time(run)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[-1] == f"step_{rows[-1]['step']:08d}.pt"  # the interrupted step is checkpointed


@pytest.mark.parametrize("command", [["sft"], ["train"]])
def test_sft_and_train_reject_bad_config_file(tmp_path, monkeypatch, command):
    path = tmp_path / "bad.yaml"
    path.write_text("domain: language\nlanguage: {}\nobjective: {name: fpo_pp}\n")
    result = in_process(monkeypatch, *command, path, "--quiet")
    assert result.exit_code == 2 and "objective.name" in result.output


def test_sft_tiny_without_the_control_extra(tmp_path):
    # A language-only install has no gymnasium or minari: shadow them with packages that fail to import.
    for name in ("gymnasium", "minari"):
        (tmp_path / "no_extra" / name).mkdir(parents=True)
        (tmp_path / "no_extra" / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
    config = ROOT / "configs" / "language" / "sudoku_sft.yaml"
    out = tmp_path / "sft"
    sets = ["language.sft.steps=2", "language.data.eval_size=4", "language.eval_batch_size=4"]
    result = dipod(
        "sft", config, "--out", out, "--quiet", *[x for s in sets for x in ("--set", s)], fake=False,
        PYTHONPATH=f"{tmp_path / 'no_extra'}:{ROOT}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sft finished" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # a run directory of the one loop


def test_an_interrupted_demo_exits_130_without_a_report(tmp_path, monkeypatch):
    import dipod.demo
    from dipod.runs.grid import NOT_STARTED

    def interrupted_grid(runs, **kwargs):
        return [{"status": "interrupted", "final_reward": None, "wall_s": 1.0}] + [dict(NOT_STARTED)] * (len(runs) - 1)

    monkeypatch.setattr(dipod.demo, "run_grid", interrupted_grid)
    result = in_process(monkeypatch, "demo", "--budget", "small", "--out", tmp_path / "demo", "--quiet")
    assert result.exit_code == 130
    assert not (tmp_path / "demo" / "report").exists()  # no report of runs that did not finish


def test_demo_small_then_eval(tmp_path):
    """The demo end to end with real trainers (language and control), then `dipod eval` on a language run."""
    out = tmp_path / "demo"
    result = dipod("demo", "--budget", "small", "--out", out, "--quiet", fake=False)
    assert result.returncode == 0, result.stderr
    report = out / "report" / "report.md"
    assert f"report in {report}" in result.stdout
    md = report.read_text()
    for heading in ("## language-sudoku", "## control-bandit"):
        assert heading in md
    for variant in ("| FPO | 1 (0) |", "| FPO + DiPOD (β=0.05) | 1 (0) |", "| FPO++ | 1 (0) |"):
        assert variant in md
    pngs = sorted((out / "report").glob("*.png"))
    assert {"language_sudoku_reward_mean.png", "language_sudoku_drift_gap.png", "control_bandit_drift_gap.png"} <= {
        p.name for p in pngs
    }
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    for png in pngs:
        assert f"]({png.name})" in md

    run = out / "runs" / "language-dipod-seed0"
    result = dipod("eval", run, "--quiet", "--set", "language.data.eval_size=4", fake=False)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout.splitlines()[0])
    assert evaluated["step"] == 2
    assert {"eval/accuracy", "eval/reward", "eval/effective_tokens", "eval/nfe"} <= set(evaluated)


def test_several_overrides_after_one_set_flag():
    from dipod.cli import expand_set_args

    argv = ["train", "c.yaml", "--set", "a.b=1", "c=2", "--out", "d", "--set", "e=3"]
    assert expand_set_args(argv) == ["train", "c.yaml", "--set", "a.b=1", "--set", "c=2", "--out", "d", "--set", "e=3"]
    # a positional argument after the overrides is not taken for one
    assert expand_set_args(["train", "--set", "a=1", "b=2", "c.yaml"]) == [
        "train",
        "--set",
        "a=1",
        "--set",
        "b=2",
        "c.yaml",
    ]


def test_collect_then_clone_then_fine_tune(tmp_path):
    """The pretrain -> fine-tune path from the command line: a run's policy records demonstrations, dipod sft
    clones them into a flow policy, and an RL run starts from the clone; a clone of another env is refused."""
    pytest.importorskip("minari")
    pytest.importorskip("jax")
    pendulum = ROOT / "configs" / "control" / "pendulum_fpo_pp.yaml"
    tiny = ["control.num_envs=4", "control.rollout_steps=16"]
    expert = dipod("train", pendulum, "--set", "train.steps=1", *tiny, "--out", tmp_path / "expert", "-q", fake=False)
    assert expert.returncode == 0, expert.stderr
    collected = dipod("collect", tmp_path / "expert", "--out", tmp_path / "demos", "--episodes", "2",
                      "--noise", "0.1", "--max-episode-steps", "20", fake=False)  # fmt: skip
    assert collected.returncode == 0 and "collected 2 episodes (40 steps" in collected.stdout, collected.stderr
    bc = tmp_path / "bc.yaml"
    bc.write_text(f"base: {pendulum}\nname: bc\ncontrol:\n  bc: {{dataset: {tmp_path / 'demos'}, steps: 4, "
                  "batch_size: 16, val_every: 2, eval_episodes: 1}\n")  # fmt: skip
    cloned = dipod("sft", bc, "--out", tmp_path / "bc", "-q", fake=False)
    assert cloned.returncode == 0 and "bc finished" in cloned.stdout, cloned.stderr
    tuned = dipod("train", pendulum, "--set", "train.steps=1", *tiny, f"control.init_from={tmp_path / 'bc'}",
                  "control.critic_warmup_iterations=1", "--out", tmp_path / "rl", "-q", fake=False)  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    hopper = ROOT / "configs" / "control" / "hopper_fpo_pp.yaml"
    refused = dipod("train", hopper, "--set", f"control.init_from={tmp_path / 'bc'}", "--out", tmp_path / "h",
                    fake=False)  # fmt: skip
    assert refused.returncode == 2 and "env 'Pendulum-v1', config 'Hopper-v5'" in refused.stderr
