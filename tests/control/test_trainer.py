"""ControlTrainer: common random numbers, stored draws, end to end, determinism, bit-for-bit resume."""

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

import dipod.control.trainer as trainer_module
from dipod.control.envs import env_seeds, make_vector_env
from dipod.control.trainer import ControlTrainer
from dipod.runs.config import validate_config
from tests.runs.cli_helpers import untimed

NUM_ENVS, ROLLOUT = 4, 16


def _cfg(**control):
    objective = control.pop("objective", {"name": "fpo_pp", "dipod_beta": 0.05})
    section = {
        "env": "Pendulum-v1",
        "num_envs": NUM_ENVS,
        "rollout_steps": ROLLOUT,
        "update_epochs": 2,
        "num_minibatches": 2,
        "actor_hidden": [16, 16],
        "critic_hidden": [16, 16],
        "sampling_steps": 4,
        "cfm_draws": 4,
        **control,
    }
    return validate_config({"domain": "control", "seed": 3, "objective": objective, "control": section})


@pytest.mark.parametrize(
    ("policy", "objective"),
    [
        ("flow", {"name": "fpo_pp", "dipod_beta": 0.05}),
        ("flow", {"name": "fpo", "dipod_beta": 0.0}),
        ("gaussian", {"name": "ppo"}),
    ],
)
def test_ratio_is_one_before_the_first_update(policy, objective):
    trainer = ControlTrainer(_cfg(policy=policy, objective=objective))
    metrics = trainer.train_step()
    assert metrics["ratio_first"] == 1.0
    assert metrics["ratio_mean"] != 1.0  # later minibatches see the updated policy
    trainer.close()


def test_stored_draws_and_old_losses_are_reused_in_every_epoch():
    trainer = ControlTrainer(_cfg(update_epochs=3))
    seen_tau, seen_old = [], []
    original_fn = trainer.objective.fn
    original_cfm = trainer.actor.cfm_losses

    def spy_cfm(obs, actions, draws):
        seen_tau.append(draws.tau.detach().clone())
        return original_cfm(obs, actions, draws)

    def spy_fn(cfm_new, cfm_old, adv, cfg):
        seen_old.append(cfm_old.detach().clone())
        return original_fn(cfm_new, cfm_old, adv, cfg)

    trainer.actor.cfm_losses = spy_cfm
    trainer.objective = dataclasses.replace(trainer.objective, fn=spy_fn)
    trainer.train_step()
    mbs = 2
    # First the old losses (one call per minibatch), then epochs x minibatches update calls.
    assert len(seen_tau) == mbs + 3 * mbs and len(seen_old) == 3 * mbs
    per_epoch_tau = [
        torch.sort(torch.cat(seen_tau[i : i + mbs]).flatten()).values for i in range(0, len(seen_tau), mbs)
    ]
    for tau in per_epoch_tau[1:]:
        assert torch.equal(tau, per_epoch_tau[0])
    per_epoch_old = [torch.sort(torch.cat(seen_old[i : i + mbs]).flatten()).values for i in range(0, 6, mbs)]
    assert torch.equal(per_epoch_old[1], per_epoch_old[0]) and torch.equal(per_epoch_old[2], per_epoch_old[0])
    trainer.close()


def test_pendulum_end_to_end_changes_parameters_and_counts_env_steps():
    trainer = ControlTrainer(_cfg(num_envs=8, rollout_steps=64))
    before = [p.detach().clone() for p in trainer.actor.parameters()]
    for _ in range(5):
        metrics = trainer.train_step()
    assert trainer.step == 5 and trainer.samples == 5 * 8 * 64
    for key in (
        "reward_mean",
        "loss",
        "pg_loss",
        "dipod_reg",
        "elbo_mean",
        "ratio_mean",
        "clip_frac",
        "grad_norm",
        "skipped_updates",
        "episode_return",
    ):
        assert math.isfinite(metrics[key]), key
    assert metrics["dipod_reg"] != 0.0
    assert all(not torch.equal(b, p) for b, p in zip(before, trainer.actor.parameters(), strict=True))
    evaluation = trainer.evaluate()
    assert set(evaluation) == {"eval/return", "eval/length"} and evaluation["eval/length"] == 200
    trainer.close()


def test_same_seed_gives_identical_metrics():
    runs = []
    for _ in range(2):
        trainer = ControlTrainer(_cfg())
        runs.append([untimed(trainer.train_step()) for _ in range(2)])
        trainer.close()
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "extra",
    [
        {"vector_mode": "async", "num_envs": 2},
        {},
        {"self_distill_iterations": 2, "self_distill_batch_size": 32},
        {"policy": "gaussian", "objective": {"name": "ppo"}},
    ],
)
def test_resume_from_state_dict_is_bit_for_bit(extra):
    reference = ControlTrainer(_cfg(**dict(extra)))
    expected = [untimed(reference.train_step()) for _ in range(4)]
    reference.close()

    first = ControlTrainer(_cfg(**dict(extra)))
    for _ in range(2):
        first.train_step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    first.close()
    buffer.seek(0)
    resumed = ControlTrainer(_cfg(**dict(extra)))
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    envs = extra.get("num_envs", NUM_ENVS)
    teacher_steps = 2 * envs * 8 if "self_distill_iterations" in extra else 0  # 2 iterations x 8 rollout steps
    assert resumed.step == 2 and resumed.samples == 2 * envs * ROLLOUT + teacher_steps
    assert [untimed(resumed.train_step()) for _ in range(2)] == expected[2:]
    resumed.close()


def test_drift_probe_reports_gap_and_cosine():
    cfg = _cfg()
    cfg.drift.probe_size = 8
    trainer = ControlTrainer(cfg)
    trainer.train_step()
    probe = trainer.drift_probe()
    keys = ("invertible_frac", "elbo", "loglik", "gap", "grad_cosine", "cfm_surrogate", "cfm_gap")
    assert set(probe) == {f"drift/{key}" for key in keys}
    assert probe["drift/gap"] == pytest.approx(probe["drift/loglik"] - probe["drift/elbo"], abs=1e-5)
    assert probe["drift/cfm_gap"] == pytest.approx(probe["drift/loglik"] - probe["drift/cfm_surrogate"], abs=1e-5)
    assert -1.0 <= probe["drift/grad_cosine"] <= 1.0
    trainer.close()


def test_truncated_steps_bootstrap_from_the_final_observation():
    # Pendulum truncates every episode at step 200; with same-step autoreset the returned observation
    # is the reset one, so the rollout must value the final observation from the info instead.
    trainer = ControlTrainer(_cfg(num_envs=2, rollout_steps=200))
    captured = {}
    step = trainer.envs.step

    def spy(actions):
        out = step(actions)
        captured["obs"], captured["infos"] = out[0], out[4]
        return out

    trainer.envs.step = spy
    roll = trainer._rollout()
    assert roll["truncated"][-1].all() and not roll["truncated"][:-1].any()
    with torch.no_grad():
        final = torch.as_tensor(np.stack(captured["infos"]["final_obs"]), dtype=torch.float32)
        reset = torch.as_tensor(captured["obs"], dtype=torch.float32)
        v_final = trainer.critic(trainer._normalize(final))
        v_reset = trainer.critic(trainer._normalize(reset))
    assert torch.equal(roll["next_values"][-1], v_final)
    assert not torch.equal(roll["next_values"][-1], v_reset)
    # The reset observation is where the next rollout starts.
    np.testing.assert_array_equal(trainer._obs, captured["obs"])
    trainer.close()


def test_envs_are_seeded_from_a_seed_sequence_of_the_run_seed(monkeypatch):
    resets = []
    original = trainer_module.make_vector_env

    def recording(*args, **kwargs):
        envs = original(*args, **kwargs)
        reset = envs.reset
        envs.reset = lambda **kw: resets.append(kw["seed"]) or reset(**kw)
        return envs

    monkeypatch.setattr(trainer_module, "make_vector_env", recording)
    trainer = ControlTrainer(_cfg(eval_episodes=2))
    trainer.evaluate()
    trainer.close()
    assert resets == [env_seeds(3, NUM_ENVS, "env"), env_seeds(3, 2, "eval_env")]
    fresh = make_vector_env("Pendulum-v1", NUM_ENVS)
    np.testing.assert_array_equal(trainer._obs, fresh.reset(seed=resets[0])[0].astype(np.float32))
    fresh.close()


@pytest.mark.parametrize("name", ["CartPole-v1", "Pendulm-v1"])
def test_an_env_without_continuous_actions_or_registration_fails_naming_control_env(name):
    with pytest.raises(ValueError, match=f"control.env = '{name}'"):
        ControlTrainer(_cfg(env=name))


def test_drift_probe_before_any_rollout_raises_and_changes_nothing():
    probed, plain = ControlTrainer(_cfg()), ControlTrainer(_cfg())
    with pytest.raises(RuntimeError, match="drift_probe needs a rollout: call train_step first"):
        probed.drift_probe()
    assert probed.samples == 0 and probed.normalizer.count == plain.normalizer.count
    assert untimed(probed.train_step()) == untimed(plain.train_step())
    probed.close()
    plain.close()


def test_finished_episodes_are_recorded_for_every_env_that_ended():
    # Every bandit step ends an episode: each env's return is its reward, its length 1.
    trainer = ControlTrainer(_cfg(env="bandit", rollout_steps=2, num_minibatches=1))
    roll = trainer._rollout()
    returns, lengths = zip(*trainer._finished, strict=True)
    np.testing.assert_allclose(returns, roll["raw_rewards"].flatten().numpy(), rtol=1e-6)  # step-major, env order
    assert lengths == (1,) * 2 * NUM_ENVS and all(type(n) is int and type(r) is float for r, n in trainer._finished)
    assert not trainer._ep_return.any() and not trainer._ep_length.any()
    trainer.close()
