"""Settings the trainer cannot honour fail with one named error, in `dipod train` and `dipod eval` alike."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dipod.cli import app
from dipod.config import ConfigError
from dipod.runs.config import load_config
from dipod.runs import run_training
from dipod.runs.trainers import build_trainer
from tests.runs.cli_helpers import ROOT
from tests.runs.fake_trainer import fake_config

TINY = [
    "train.steps=1",
    "control.num_envs=2",
    "control.rollout_steps=8",
    "control.update_epochs=1",
    "control.num_minibatches=2",
    "control.eval_episodes=1",
    "control.actor_hidden=[8]",
    "control.critic_hidden=[8]",
]


def _never_called(cfg):
    raise AssertionError("the trainer must not be built")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train.device = 'cuda:1', but torch sees no CUDA device on this machine"):
        run_training(fake_config(device="cuda:1"), tmp_path, trainer_factory=_never_called, quiet=True)


def test_unparseable_device_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train.device = 'gpu0' is not a torch device"):
        run_training(fake_config(device="gpu0"), tmp_path, trainer_factory=_never_called, quiet=True)


def _error_line(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.output.strip().splitlines()[0]


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("control") / "run"
    cfg = load_config(ROOT / "configs" / "control" / "pendulum_fpo_pp.yaml", TINY)
    run_training(cfg, run, trainer_factory=build_trainer, quiet=True)
    return run


def test_eval_ignores_the_training_envs(control_run):
    # The checkpoint holds 2 training-env snapshots; evaluation uses envs of its own.
    result = CliRunner().invoke(app, ["eval", str(control_run), "--quiet", "--set", "control.num_envs=3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["step"] == 1


@pytest.mark.parametrize(
    ("override", "code", "message"),
    [
        ("train.device=gpu0", 2, "error: train.device = 'gpu0' is not a torch device"),
        ("control.env=CartPole-v1", 2, "control.env = 'CartPole-v1' has a Discrete action space"),
        ("control.actor_hidden=[4]", 1, "error: cannot load "),
    ],
)
def test_eval_turns_build_and_load_failures_into_named_errors(control_run, override, code, message):
    result = CliRunner().invoke(app, ["eval", str(control_run), "--quiet", "--set", override])
    assert result.exit_code == code, result.output
    assert message in _error_line(result)
