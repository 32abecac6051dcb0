"""Experts from checkpoints: a control run's (flow or Gaussian) or a BC run's actor records demonstrations."""

import numpy as np
import pytest
import torch

pytest.importorskip("minari")
pytest.importorskip("jax")

from dipod.checkpoints import checkpoint_path, list_checkpoints, save_checkpoint
from dipod.control.demos import collect_demonstrations, load_demonstrations
from dipod.control.experts import expert_policy_fn, load_run_actor
from dipod.control.trainer import ControlTrainer
from dipod.runs.config import validate_config


def _run_checkpoint(tmp_path, policy):
    objective = {"name": "fpo_pp" if policy == "flow" else "ppo", "dipod_beta": 0.0}
    cfg = validate_config(
        {
            "domain": "control",
            "seed": 1,
            "objective": objective,
            "control": {"env": "Pendulum-v1", "policy": policy, "num_envs": 2, "rollout_steps": 8,
                        "num_minibatches": 2, "update_epochs": 1, "actor_hidden": [16], "critic_hidden": [16],
                        "sampling_steps": 2},
        }
    )  # fmt: skip
    trainer = ControlTrainer(cfg)
    trainer.train_step()  # moves the actor and the normaliser away from their initial values
    # The payload layout of dipod.runs.loop's checkpoints.
    save_checkpoint(
        checkpoint_path(tmp_path / "run" / "checkpoints", trainer.step),
        {"trainer": trainer.state_dict(), "config": cfg.model_dump(mode="json"), "step": trainer.step},
    )
    return trainer


@pytest.mark.parametrize("policy", ["flow", "gaussian"])
def test_a_run_checkpoint_is_an_expert(tmp_path, policy):
    trainer = _run_checkpoint(tmp_path, policy)
    fn, loaded = expert_policy_fn(tmp_path / "run", seed=5)
    assert loaded.env == "Pendulum-v1" and loaded.step == 1 and type(loaded.actor) is type(trainer.actor)
    torch.testing.assert_close(loaded.normalizer.mean, trainer.normalizer.mean)
    # Same actions as the trainer's actor with the same generator state.
    obs = np.array([0.6, -0.8, 0.3], dtype=np.float32)
    expected = trainer.actor.sample(trainer.normalizer(torch.from_numpy(obs)[None]), torch.Generator().manual_seed(5))
    np.testing.assert_allclose(fn(obs), expected[0].detach().numpy(), rtol=1e-6)
    summary = collect_demonstrations("Pendulum-v1", fn, episodes=1, out=tmp_path / "demos", max_episode_steps=8)
    assert summary.steps == 8 and load_demonstrations(tmp_path / "demos").actions.shape == (8, 1)
    trainer.close()


def test_not_a_control_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run_actor(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load_run_actor(tmp_path / "empty")
    save_checkpoint(tmp_path / "odd.pt", {"trainer": {}})
    with pytest.raises(ValueError, match="not a control run's checkpoint"):
        load_run_actor(tmp_path / "odd.pt")


def test_a_bc_checkpoint_is_an_expert(tmp_path):
    from dipod.runs.sft import train_bc

    collect_demonstrations("Pendulum-v1", lambda o: np.zeros(1, np.float32), episodes=3, out=tmp_path / "d",
                           max_episode_steps=10)  # fmt: skip
    cfg = validate_config(
        {"domain": "control", "control": {"env": "Pendulum-v1", "actor_hidden": [8],
                                          "bc": {"dataset": str(tmp_path / "d"), "steps": 3, "eval_episodes": 1}}}
    )  # fmt: skip
    result = train_bc(cfg, out_dir=tmp_path / "bc")
    loaded = load_run_actor(tmp_path / "bc")
    newest = list_checkpoints(tmp_path / "bc" / "checkpoints")[-1]
    assert loaded.step == 3 and loaded.path == newest and loaded.env == "Pendulum-v1"
    assert all(torch.equal(a, b) for a, b in zip(loaded.actor.parameters(), result.actor.parameters(), strict=True))
