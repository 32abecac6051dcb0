"""Behaviour cloning of flow policies and loading the clone for RL: learning, resume, checkpoints, bad input."""

import numpy as np
import pytest
import torch

pytest.importorskip("minari")
pytest.importorskip("jax")

from dipod.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from dipod.config import ConfigError
from dipod.control.bc import (
    actor_policy_fn,
    evaluate_actor,
    fit_normalizer,
    load_pretrained_actor,
)
from dipod.control.demos import collect_demonstrations, load_demonstrations
from dipod.control.policy import FlowPolicy
from dipod.runs.config import validate_config
from dipod.runs.loop import RunDirError
from dipod.runs.sft import train_bc
from dipod.seeding import torch_generator

ENV = "Pendulum-v1"


def _expert(obs: np.ndarray) -> np.ndarray:
    """Deterministic torque against the angular velocity, in the box [-2, 2]."""
    return np.clip(np.array([-0.8 * obs[2]], dtype=np.float32), -2.0, 2.0)


@pytest.fixture(scope="module")
def demos_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("bc") / "pendulum-expert-v0"
    collect_demonstrations(ENV, _expert, episodes=30, out=out, seed=1, max_episode_steps=20)
    return out


def _cfg(dataset, **bc):
    settings = {"dataset": str(dataset), "steps": 30, "batch_size": 32, "val_every": 10, "eval_episodes": 1}
    settings.update(bc)
    return validate_config(
        {
            "domain": "control",
            "seed": 0,
            "control": {"env": ENV, "actor_hidden": [32, 32], "sampling_steps": 4, "bc": settings},
            "train": {"log_every": 5},
        }
    )


def _flat(actor: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in actor.parameters()])


def test_bc_learns_the_experts_actions(demos_path, tmp_path):
    cfg = _cfg(demos_path, steps=400, batch_size=64, lr=3e-3, val_fraction=0.2, val_every=400)
    before = FlowPolicy(3, 1, hidden=(32, 32), sampling_steps=4, generator=torch_generator(cfg.seed, "init"))
    result = train_bc(cfg, out_dir=tmp_path / "run")
    demos = load_demonstrations(demos_path)
    obs = torch.from_numpy(demos.obs)
    g = torch.Generator().manual_seed(0)
    cloned = result.actor.sample(result.normalizer(obs), g)  # (M, 1)
    untrained = before.sample(result.normalizer(obs), g)
    target = torch.from_numpy(demos.actions)
    err, err0 = (cloned - target).abs().mean().item(), (untrained - target).abs().mean().item()
    assert err < 0.25 * err0 and err < 0.2, (err, err0)
    # Held-out loss went down too, and the last row carries validation and evaluation metrics.
    last = result.rows[-1]
    assert {"val/cfm_loss", "val/elbo", "eval/return", "eval/length"} <= set(last)
    assert last["val/cfm_loss"] < 0.5 * result.rows[0]["loss"]
    assert result.summary["status"] == "completed" and result.summary["samples"] == 400 * 64
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and (tmp_path / "run" / "summary.json").is_file()


def test_normaliser_is_fitted_on_the_training_episodes_and_saved(demos_path, tmp_path):
    result = train_bc(_cfg(demos_path, val_fraction=0.4), out_dir=tmp_path / "run")
    checkpoint = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    payload = load_checkpoint(checkpoint)["trainer"]
    demos = load_demonstrations(demos_path)
    train_eps = payload["dataset"]["train_episodes"]
    assert len(train_eps) == 18 and len(payload["dataset"]["val_episodes"]) == 12
    train_obs = torch.from_numpy(demos.obs[np.isin(demos.episode, train_eps)])
    expected = fit_normalizer(train_obs)
    torch.testing.assert_close(result.normalizer.mean, train_obs.double().mean(0))
    torch.testing.assert_close(result.normalizer.var, expected.var)
    loaded = load_pretrained_actor(tmp_path / "run", 3, 1, expected_env=ENV)
    torch.testing.assert_close(loaded.normalizer.mean, result.normalizer.mean)
    assert torch.equal(_flat(loaded.actor), _flat(result.actor))
    assert loaded.path == checkpoint and loaded.env == ENV


def test_resume_continues_bit_for_bit(demos_path, tmp_path):
    straight = train_bc(_cfg(demos_path, steps=30, checkpoint_every=10), out_dir=tmp_path / "a")
    train_bc(_cfg(demos_path, steps=20, checkpoint_every=10), out_dir=tmp_path / "b")
    resumed = train_bc(_cfg(demos_path, steps=30, checkpoint_every=10), out_dir=tmp_path / "b", resume=True)
    assert torch.equal(_flat(straight.actor), _flat(resumed.actor))

    # Same rows except the end-of-run evaluation the shorter run added at step 20, and wall times.
    def strip(history):
        return [{k: v for k, v in r.items() if k != "time_s" and not k.startswith(("eval/", "val/"))} for r in history]

    assert strip(straight.rows) == strip(resumed.rows)
    assert len(list_checkpoints(tmp_path / "b" / "checkpoints")) <= 3
    with pytest.raises(RunDirError, match="already holds a run"):
        train_bc(_cfg(demos_path, steps=40), out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"control.bc.lr: checkpoint 0.001, now 0.002"):
        train_bc(_cfg(demos_path, steps=40, lr=2e-3), out_dir=tmp_path / "b", resume=True)


def test_bad_input_fails_before_any_work(demos_path, tmp_path):
    hopper = _cfg(demos_path).model_copy(deep=True)
    hopper.control.env = "Hopper-v5"
    with pytest.raises(ConfigError, match=r"observation shape \(3,\) does not match Hopper-v5's \(11,\)"):
        train_bc(hopper, out_dir=tmp_path / "hopper")
    with pytest.raises(ConfigError, match="never downloaded"):
        train_bc(_cfg(tmp_path / "missing"), out_dir=tmp_path / "missing_run")
    no_data = _cfg(demos_path).model_copy(deep=True)
    no_data.control.bc.dataset = None
    with pytest.raises(ConfigError, match=r"control\.bc\.dataset is not set"):
        train_bc(no_data, out_dir=tmp_path / "none")
    # named before any step: no metrics, no checkpoint
    assert not any((tmp_path / d / "metrics.jsonl").exists() for d in ("hopper", "missing_run", "none"))


def test_load_pretrained_actor_refuses_a_checkpoint_that_does_not_fit(demos_path, tmp_path):
    train_bc(_cfg(demos_path, steps=5), out_dir=tmp_path / "run")
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    with pytest.raises(ValueError, match=rf"{ckpt}.*env 'Pendulum-v1', config 'Hopper-v5'") as err:
        load_pretrained_actor(ckpt, 11, 3, expected_env="Hopper-v5")
    assert "observation size 3, env 11" in str(err.value) and "action size 1, env 3" in str(err.value)
    cfg = _cfg(demos_path).model_copy(deep=True)
    cfg.control.actor_hidden = (64, 64)
    cfg.control.sampling_steps = 8
    with pytest.raises(ValueError, match=r"control.actor_hidden \(32, 32\), config \(64, 64\)"):
        load_pretrained_actor(ckpt, 3, 1, control=cfg.control)
    cfg.control.actor_hidden = (32, 32)
    assert load_pretrained_actor(ckpt, 3, 1, control=cfg.control).actor.sampling_steps == 8  # a sampler setting
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained_actor(tmp_path / "nope.pt", 3, 1)
    bad = tmp_path / "not_bc.pt"
    torch.save({"format": 1, "trainer": {}, "kind": "rl"}, bad)
    with pytest.raises(CheckpointError, match=rf"{bad} is not a BC checkpoint"):
        load_pretrained_actor(bad, 3, 1)


def test_a_dipod_actor_records_demonstrations_and_is_scored_alike(tmp_path):
    # The collector takes any actor through actor_policy_fn; evaluate_actor is deterministic.
    actor = FlowPolicy(3, 1, hidden=(16,), sampling_steps=2, generator=torch.Generator().manual_seed(0))
    norm = fit_normalizer(torch.randn(100, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    fn = actor_policy_fn(actor, norm, generator=torch.Generator().manual_seed(2))
    summary = collect_demonstrations(ENV, fn, episodes=2, out=tmp_path / "d", max_episode_steps=10)
    assert summary.steps == 20 and load_demonstrations(tmp_path / "d", env_id=ENV).actions.shape == (20, 1)
    first = evaluate_actor(actor, norm, ENV, episodes=1, seed=0)
    assert first == evaluate_actor(actor, norm, ENV, episodes=1, seed=0)
    assert first["eval/length"] == 200


def test_config_fields_for_pretraining():
    cfg = validate_config({"domain": "control", "control": {"env": ENV}})
    assert cfg.control.init_from is None and cfg.control.critic_warmup_iterations == 0
    assert cfg.control.bc.dataset is None and cfg.control.bc.val_fraction == 0.1
    with pytest.raises(ValueError, match=r"control\.init_from = 'x\.pt' loads a flow policy"):
        validate_config({"domain": "control", "control": {"env": ENV, "policy": "gaussian", "init_from": "x.pt"}})
    with pytest.raises(ValueError, match="val_fraction"):
        validate_config({"domain": "control", "control": {"env": ENV, "bc": {"val_fraction": 1.0}}})


def test_rl_starts_from_the_clone_and_the_critic_warms_up_first(demos_path, tmp_path):
    from dipod.control.trainer import ControlTrainer

    train_bc(_cfg(demos_path, steps=5), out_dir=tmp_path / "bc")
    rl = validate_config(
        {"domain": "control", "seed": 0, "objective": {"name": "fpo_pp", "dipod_beta": 0.05},
         "control": {"env": ENV, "actor_hidden": [32, 32], "sampling_steps": 4, "num_envs": 2, "rollout_steps": 8,
                     "num_minibatches": 2, "update_epochs": 1, "init_from": str(tmp_path / "bc"),
                     "critic_warmup_iterations": 1}}
    )  # fmt: skip
    trainer = ControlTrainer(rl)
    clone = load_pretrained_actor(tmp_path / "bc", 3, 1)
    assert torch.equal(_flat(trainer.actor), _flat(clone.actor))
    torch.testing.assert_close(trainer.normalizer.mean, clone.normalizer.mean)
    critic_before = _flat(trainer.critic)
    trainer.train_step()  # warm-up: only the critic moves
    assert torch.equal(_flat(trainer.actor), _flat(clone.actor)) and not torch.equal(
        _flat(trainer.critic), critic_before
    )
    trainer.train_step()
    assert not torch.equal(_flat(trainer.actor), _flat(clone.actor))
    trainer.close()
    other = rl.model_copy(deep=True)
    other.control.actor_hidden = (64, 64)
    with pytest.raises(ValueError, match=r"control.actor_hidden \(32, 32\), config \(64, 64\)"):
        ControlTrainer(other)
