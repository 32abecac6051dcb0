"""The real trainers through the dipod command: killed with SIGKILL at random points, resumed, identical.

Tiny budgets: a few seconds of training per run. Each test compares metrics.jsonl (time_s
excluded) of an uninterrupted run with one killed twice and resumed.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from tests.runs.cli_helpers import ROOT, dipod, kill_during_run, rows_without_time

CONTROL_TINY = [
    "train.steps=16",
    "train.checkpoint_every=2",
    "train.eval_every=5",
    "drift.every=4",
    "drift.probe_size=8",
    "control.num_envs=2",
    "control.rollout_steps=16",
    "control.update_epochs=2",
    "control.num_minibatches=2",
    "control.eval_episodes=1",
]


def _sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def _kill_twice_and_compare(tmp_path: Path, config: Path, overrides: list[str], steps: int, seed: int) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    result = dipod("train", config, "--out", full, "--quiet", *_sets(overrides), fake=False)
    assert result.returncode == 0, result.stderr
    rng = random.Random(seed)
    kills = 0
    for _ in range(2):
        args = ["train", config, "--out", part, "--quiet", "--auto-resume", *_sets(overrides)]
        kills += kill_during_run(args, part, rng.randint(1, steps - 3), fake=False, extra_sleep=rng.random() * 0.1)
    assert kills >= 1  # at least one kill landed before the run finished
    result = dipod("train", config, "--out", part, "--quiet", "--resume", *_sets(overrides), fake=False)
    assert result.returncode == 0, result.stderr
    assert rows_without_time(part) == rows_without_time(full)


def test_control_pendulum_crash_resume_in_process(tmp_path):
    """Default-suite version: the run 'dies' (an exception) after a random step, then resumes."""
    from dipod.runs.config import load_config
    from dipod.runs import run_training
    from dipod.runs.trainers import build_trainer

    cfg = load_config(ROOT / "configs" / "control" / "pendulum_fpo_pp_dipod.yaml", CONTROL_TINY)
    cfg.train.steps = 7
    run_training(cfg, tmp_path / "full", trainer_factory=build_trainer, quiet=True)

    class Crash(Exception):
        pass

    def dying(c):
        trainer = build_trainer(c)
        original = trainer.train_step

        def train_step():
            if trainer.step == 5:
                raise Crash
            return original()

        trainer.train_step = train_step
        return trainer

    with pytest.raises(Crash):
        run_training(cfg, tmp_path / "part", trainer_factory=dying, quiet=True)
    run_training(cfg, tmp_path / "part", trainer_factory=build_trainer, quiet=True, resume=True)
    assert rows_without_time(tmp_path / "part") == rows_without_time(tmp_path / "full")


def test_control_diverging_run_stops_and_never_checkpoints_nonfinite_state(tmp_path):
    """An absurd learning rate blows the policy up: updates are skipped, the run stops with a message."""
    from dipod.runs.config import load_config
    from dipod.runs import BadStepsError, run_training
    from dipod.runs.checkpoint import list_checkpoints, load_checkpoint
    from dipod.runs.loop import nonfinite_tensors
    from dipod.runs.trainers import build_trainer

    overrides = [*CONTROL_TINY, "optim.lr=1e30", "optim.max_grad_norm=null", "train.max_bad_steps=2"]
    cfg = load_config(ROOT / "configs" / "control" / "pendulum_fpo_pp.yaml", [*overrides, "train.checkpoint_every=1"])
    with pytest.raises(BadStepsError, match="2 consecutive steps"):
        run_training(cfg, tmp_path, trainer_factory=build_trainer, quiet=True)
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert checkpoints  # the steps before the blow-up
    for path in checkpoints:
        assert nonfinite_tensors(load_checkpoint(path)["trainer"]) == []


@pytest.mark.slow
def test_control_pendulum_sigkill_resume(tmp_path):
    config = ROOT / "configs" / "control" / "pendulum_fpo_pp_dipod.yaml"
    _kill_twice_and_compare(tmp_path, config, CONTROL_TINY, steps=16, seed=11)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("dipod.language.trainer") is None, reason="no language trainer")
def test_language_sudoku_sigkill_resume(tmp_path):
    from dipod.demo import BUDGETS

    config = ROOT / "dipod" / "configs" / "demo" / "language_sudoku.yaml"
    overrides = [*BUDGETS["small"].overrides["language"], "train.steps=6", "train.checkpoint_every=2"]
    _kill_twice_and_compare(tmp_path, config, overrides, steps=6, seed=5)
