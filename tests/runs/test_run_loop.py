"""The run loop with a fake trainer: run-dir contents, bit-for-bit resume, bad steps, interrupts."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch

import dipod.runs.trainers as trainers
from dipod.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from dipod.config import ConfigError
from dipod.runs import BadStepsError, run_training
from dipod.runs.config import load_config
from dipod.runs.grid import GridRun, run_grid
from dipod.runs.loop import RunDirError, is_bad_step, nonfinite_tensors
from dipod.runs.metrics import read_metrics
from tests.runs.cli_helpers import untimed
from tests.runs.fake_trainer import FakeTrainer, fake_config


class Crash(Exception):
    pass


def crashing_at(step):
    """A FakeTrainer factory whose process 'dies' when asked for step ``step + 1``."""

    class Crashing(FakeTrainer):
        def train_step(self):
            if self.step == step:
                raise Crash
            return super().train_step()

    return Crashing


def _without_time(rows):
    """Rows without their wall-clock fields (time_s, time/*, drift/seconds)."""
    return [untimed(r) for r in rows]


def test_run_dir_contents(tmp_path):
    cfg = fake_config(steps=5, eval_every=2)
    result = run_training(cfg, tmp_path, trainer_factory=FakeTrainer, quiet=True)
    assert result.status == "completed" and result.step == 5
    assert load_config(tmp_path / "config.yaml") == cfg
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["samples"] for r in rows] == [16, 32, 48, 64, 80]
    for row in rows:
        assert {"step", "samples", "time_s", "reward_mean", "loss", "grad_norm", "skipped_updates"} <= set(row)
    assert [("eval/reward" in r) for r in rows] == [False, True, False, True, True]  # every 2 and at the end
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 5
    assert summary["final_reward"] == rows[-1]["reward_mean"]
    assert summary["best_reward"] == max(r["reward_mean"] for r in rows)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step_00000002.pt",
        "step_00000004.pt",
        "step_00000005.pt",
    ]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "tb"))
    board.Reload()
    assert [e.step for e in board.Scalars("train/reward_mean")] == [1, 2, 3, 4, 5]
    assert [e.value for e in board.Scalars("eval/reward")] == pytest.approx(
        [rows[1]["eval/reward"], rows[3]["eval/reward"], rows[4]["eval/reward"]]
    )


def test_eval_at_start_logs_the_initial_policy_once(tmp_path):
    cfg = fake_config(steps=4, eval_every=2, eval_at_start=True)
    with pytest.raises(Crash):
        run_training(cfg, tmp_path, trainer_factory=crashing_at(3), quiet=True)
    run_training(cfg, tmp_path, trainer_factory=FakeTrainer, resume="always", quiet=True)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # the step-0 row is not repeated on resume
    assert rows[0]["samples"] == 0
    assert rows[0]["eval/reward"] == FakeTrainer(cfg).evaluate()["eval/reward"]  # the untrained model


def test_drift_rows_and_log_every(tmp_path):
    cfg = fake_config(steps=6, log_every=3)
    cfg.drift.every = 2
    run_training(cfg, tmp_path, trainer_factory=FakeTrainer, quiet=True)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 3, 4, 6]  # drift at 2, 4, 6; log at 3, 6
    assert ["drift/gap" in r for r in rows] == [True, False, True, True]


@pytest.mark.parametrize("stop_after", [1, 3, 4])
def test_resume_is_bit_for_bit(tmp_path, stop_after):
    cfg = fake_config(steps=7, eval_every=3)
    cfg.drift.every = 2
    run_training(cfg, tmp_path / "full", trainer_factory=FakeTrainer, quiet=True)
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")

    # Crash after `stop_after` steps (checkpoints every 2), append a torn row as a killed writer
    # would, then resume: rows after the checkpoint are truncated and written again identically.
    part = tmp_path / "part"
    with pytest.raises(Crash):
        run_training(cfg, part, trainer_factory=crashing_at(stop_after), quiet=True)
    assert json.loads((part / "summary.json").read_text())["status"] == "failed"
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "stale": true}\n{"torn')
    result = run_training(cfg, part, trainer_factory=FakeTrainer, quiet=True, resume=True)
    assert result.status == "completed"
    resumed = read_metrics(part / "metrics.jsonl")
    assert _without_time(resumed) == _without_time(full)
    assert json.loads((part / "summary.json").read_text())["best_reward"] == max(r["reward_mean"] for r in full)


def test_resume_from_older_checkpoint_when_newest_is_corrupt(tmp_path, capsys):
    cfg = fake_config(steps=6)
    run_training(cfg, tmp_path / "full", trainer_factory=FakeTrainer, quiet=True)
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    part = tmp_path / "part"
    with pytest.raises(Crash):
        run_training(cfg, part, trainer_factory=crashing_at(5), quiet=True)
    newest = list_checkpoints(part / "checkpoints")[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    run_training(cfg, part, trainer_factory=FakeTrainer, quiet=True, resume=True)
    err = capsys.readouterr().err
    assert str(newest) in err and "falling back" in err and "step_00000002.pt" in err
    assert _without_time(read_metrics(part / "metrics.jsonl")) == _without_time(full)


def test_existing_run_needs_resume_and_same_config(tmp_path):
    cfg = fake_config(steps=2)
    run_training(cfg, tmp_path, trainer_factory=FakeTrainer, quiet=True)
    with pytest.raises(RunDirError, match="--resume"):
        run_training(cfg, tmp_path, trainer_factory=FakeTrainer, quiet=True)
    changed = cfg.model_copy(deep=True)
    changed.optim.lr = 0.1
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        run_training(changed, tmp_path, trainer_factory=FakeTrainer, quiet=True, resume=True)
    longer = cfg.model_copy(deep=True)
    longer.train.steps = 3  # extending a run is allowed
    assert run_training(longer, tmp_path, trainer_factory=FakeTrainer, quiet=True, resume=True).step == 3


def test_a_trainer_that_cannot_be_built_or_resumed_gives_a_named_error(tmp_path):
    cfg = fake_config(steps=2)

    def unbuildable(c):
        raise FileNotFoundError("/no/such/model/config.json")

    with pytest.raises(ConfigError, match=r"cannot build the trainer: /no/such/model/config\.json"):
        run_training(cfg, tmp_path / "a", trainer_factory=unbuildable, quiet=True)
    run_training(cfg, tmp_path / "b", trainer_factory=FakeTrainer, quiet=True)

    class Refusing(FakeTrainer):
        def load_state_dict(self, state, *, restore_envs=True):
            raise ValueError("written by 2 process(es)")

    longer = fake_config(steps=3)
    with pytest.raises(CheckpointError, match=r"cannot resume .*written by 2 process\(es\)"):
        run_training(longer, tmp_path / "b", trainer_factory=Refusing, quiet=True, resume=True)


def test_only_rank_zero_writes_the_run_directory(tmp_path, monkeypatch):
    cfg = fake_config(steps=4, eval_every=2)
    monkeypatch.setenv("RANK", "1")
    result = run_training(cfg, tmp_path / "rank1", trainer_factory=FakeTrainer, quiet=True)
    assert result.step == 4 and result.summary["status"] == "completed"
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setenv("RANK", "0")
    run_training(cfg, tmp_path / "rank0", trainer_factory=FakeTrainer, quiet=True)
    assert len(read_metrics(tmp_path / "rank0" / "metrics.jsonl")) > 0


def test_nan_losses_stop_the_run_and_are_never_checkpointed(tmp_path):
    cfg = fake_config(steps=20, max_bad_steps=3, checkpoint_every=1)
    with pytest.raises(BadStepsError, match="3 consecutive steps"):
        run_training(cfg, tmp_path, trainer_factory=lambda c: FakeTrainer(c, nan_from=5), quiet=True)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]  # bad steps 5, 6, 7
    assert rows[-1]["loss"] is None and rows[-1]["skipped_updates"] == 2  # NaN is written as null
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "stopped"
    # Skipped updates leave the weights finite, and nothing after the stop is checkpointed.
    last = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])
    assert last["step"] == 6
    assert all(torch.isfinite(v).all() for v in last["trainer"]["model"].values())


def test_nonfinite_parameters_are_not_checkpointed(tmp_path, capsys):
    cfg = fake_config(steps=4, checkpoint_every=1)
    with pytest.raises(BadStepsError):
        run_training(
            cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_bad_steps": 1})}),
            tmp_path,
            trainer_factory=lambda c: FakeTrainer(c, poison_params_at=2),
            quiet=True,
        )
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path / "checkpoints")] == [1]
    assert "non-finite values in model.bias" in capsys.readouterr().err


def test_nonfinite_tensors_names_them():
    state = {
        "model": {"w": torch.ones(2), "b": torch.tensor([float("nan")])},
        "obs": np.array([np.inf]),
        "ids": torch.tensor([1, 2]),
        "list": [torch.ones(1), torch.tensor([float("inf")])],
    }
    assert nonfinite_tensors(state) == ["model.b", "obs", "list.1"]


def test_is_bad_step():
    assert is_bad_step({"loss": math.nan})
    assert not is_bad_step({"loss": 1.0, "skipped_updates": 1.0, "updates": 2.0})
    assert is_bad_step({"loss": 1.0, "skipped_updates": 2.0, "updates": 2.0})
    # Averages that include a skipped update are NaN; with the update count known that is not a bad step.
    assert not is_bad_step({"loss": math.nan, "grad_norm": math.nan, "skipped_updates": 1.0, "updates": 4})
    assert is_bad_step({"loss": math.nan, "grad_norm": math.nan, "skipped_updates": 4.0, "updates": 4})
    assert is_bad_step({"loss": math.nan, "skipped_updates": 0.0, "updates": 4})
    assert is_bad_step({"loss": 1.0, "skipped_updates": 1.0, "grad_norm": math.inf})
    assert not is_bad_step({"loss": 1.0, "skipped_updates": 0.0, "grad_norm": math.inf})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_checkpoints_then_resume_matches(tmp_path, sig):
    cfg = fake_config(steps=6, checkpoint_every=100)
    run_training(cfg, tmp_path / "full", trainer_factory=FakeTrainer, quiet=True)

    class Interrupting(FakeTrainer):
        def train_step(self):
            out = super().train_step()
            if self.step == 3:
                signal.raise_signal(sig)
            return out

    result = run_training(cfg, tmp_path / "part", trainer_factory=Interrupting, quiet=True)
    assert result.status == "interrupted" and result.step == 3
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path / "part" / "checkpoints")] == [3]
    run_training(cfg, tmp_path / "part", trainer_factory=FakeTrainer, quiet=True, resume=True)
    assert _without_time(read_metrics(tmp_path / "part" / "metrics.jsonl")) == _without_time(
        read_metrics(tmp_path / "full" / "metrics.jsonl")
    )


def test_progress_bar_and_quiet(tmp_path, capsys):
    cfg = fake_config(steps=3)
    run_training(cfg, tmp_path / "loud", trainer_factory=FakeTrainer, quiet=False)
    err = capsys.readouterr().err
    final_reward = read_metrics(tmp_path / "loud" / "metrics.jsonl")[-1]["reward_mean"]
    assert "3/3" in err and f"reward {final_reward:+.3f}" in err and "ETA" in err
    run_training(cfg, tmp_path / "quiet", trainer_factory=FakeTrainer, quiet=True)
    assert capsys.readouterr().err == ""


def test_report_to_chooses_the_sinks(tmp_path, monkeypatch):
    cfg = fake_config(steps=2)
    cfg.train.report_to = []
    run_training(cfg, tmp_path / "none", trainer_factory=FakeTrainer, quiet=True)
    assert (tmp_path / "none" / "metrics.jsonl").is_file() and not (tmp_path / "none" / "tb").exists()

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg.train.report_to = ["wandb"]
    run_training(cfg, tmp_path / "wandb", trainer_factory=FakeTrainer, quiet=True)
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))  # an offline run, nothing sent anywhere


def test_adaptive_beta_from_the_config_is_resumable(tmp_path):
    cfg = fake_config(steps=6, checkpoint_every=2)
    cfg.drift.every = 1
    cfg.adaptive_beta = {"budget": 0.5, "max_entropy_drop": None, "max_zero_std_ratio": None}
    full = run_training(cfg, tmp_path / "full", trainer_factory=FakeTrainer, quiet=True)
    betas = [row["dipod_beta"] for row in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    assert len(set(betas)) > 1  # the fake's gap (0.81) is over budget: beta doubles after each probe
    assert betas[1] == pytest.approx(2 * betas[0])
    with pytest.raises(Crash):  # killed after step 3; the last checkpoint (step 2) holds the controller's state
        run_training(cfg, tmp_path / "part", trainer_factory=crashing_at(3), quiet=True)
    run_training(cfg, tmp_path / "part", trainer_factory=FakeTrainer, quiet=True, resume=True)
    assert _without_time(read_metrics(tmp_path / "part" / "metrics.jsonl")) == _without_time(
        read_metrics(tmp_path / "full" / "metrics.jsonl")
    )
    assert full.status == "completed"


def test_resume_of_a_directory_without_a_run_is_an_error_and_auto_resume_starts(tmp_path):
    cfg = fake_config(steps=2)
    with pytest.raises(RunDirError, match=r"--resume: .*empty holds no checkpoint to continue"):
        run_training(cfg, tmp_path / "empty", trainer_factory=FakeTrainer, quiet=True, resume=True)
    assert not (tmp_path / "empty" / "metrics.jsonl").exists()
    first = run_training(cfg, tmp_path / "auto", trainer_factory=FakeTrainer, quiet=True, resume="auto")
    again = run_training(cfg, tmp_path / "auto", trainer_factory=FakeTrainer, quiet=True, resume="auto")
    assert first.step == again.step == 2  # the second call found the finished run and had nothing left to do


def test_an_interrupted_run_stops_its_grid_and_a_rerun_continues(tmp_path, monkeypatch):
    class InterruptedOnce(FakeTrainer):
        def train_step(self):
            out = super().train_step()
            if self.step == 2 and not (tmp_path / "signalled").exists():
                (tmp_path / "signalled").touch()
                signal.raise_signal(signal.SIGTERM)
            return out

    monkeypatch.setattr(trainers, "build_trainer", lambda cfg, device=None: InterruptedOnce(cfg))
    runs = [GridRun(f"run{i}", fake_config(steps=4), tmp_path / f"run{i}") for i in range(3)]
    first = run_grid(runs, jobs=1, quiet=True)
    assert [info["status"] for info in first] == ["interrupted", "not started", "not started"]
    assert not runs[1].run_dir.exists()
    second = run_grid(runs, jobs=1, quiet=True)
    assert [info["status"] for info in second] == ["completed"] * 3
    assert [r["step"] for r in read_metrics(runs[0].run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
