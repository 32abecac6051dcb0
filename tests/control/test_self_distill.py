"""Self-distillation: the student's CFM loss on a frozen teacher's samples goes down; the teacher is untouched."""

import math

import torch

from dipod.bounds.flow import draw_flow_noise
from dipod.control.policy import FlowPolicy
from dipod.control.self_distill import self_distill

OBS, ACT = 3, 2


def test_self_distillation_lowers_cfm_loss_on_teacher_samples():
    g = torch.Generator().manual_seed(0)
    actor = FlowPolicy(OBS, ACT, hidden=(32, 32), sampling_steps=4, generator=g)
    obs_pool = torch.randn(512, OBS, generator=g)
    teacher_seen = []

    def collect(teacher):
        teacher_seen.append(teacher)
        with torch.no_grad():
            return obs_pool, teacher.sample(obs_pool, g)

    # A fixed evaluation set of teacher samples and draws, from a copy of the initial actor.
    with torch.no_grad():
        eval_actions = actor.sample(obs_pool, torch.Generator().manual_seed(1))
    eval_draws = draw_flow_noise(512, 16, ACT, generator=torch.Generator().manual_seed(2))
    initial = {k: v.clone() for k, v in actor.state_dict().items()}
    with torch.no_grad():
        before = actor.cfm_losses(obs_pool, eval_actions, eval_draws).mean().item()

    stats = self_distill(actor, collect, iterations=40, batch_size=128, lr=3e-3, num_draws=8, generator=g)

    with torch.no_grad():
        after = actor.cfm_losses(obs_pool, eval_actions, eval_draws).mean().item()
    assert after < before - 0.1, (before, after)
    assert stats["self_distill/cfm_last"] < stats["self_distill/cfm_first"]
    assert stats["self_distill/skipped_updates"] == 0
    # The teacher is one frozen copy of the initial actor, reused every iteration.
    assert len(teacher_seen) == 40 and all(t is teacher_seen[0] for t in teacher_seen)
    for k, v in teacher_seen[0].state_dict().items():
        assert torch.equal(v, initial[k])
    assert not any(p.requires_grad for p in teacher_seen[0].parameters())


def test_trainer_runs_self_distillation_once_then_resets_the_optimiser():
    from dipod.control.trainer import ControlTrainer
    from dipod.runs.config import validate_config

    cfg = validate_config(
        {
            "domain": "control",
            "objective": {"name": "fpo_pp"},
            "control": {
                "num_envs": 2,
                "rollout_steps": 8,
                "num_minibatches": 2,
                "update_epochs": 1,
                "self_distill_iterations": 3,
                "self_distill_rollout_steps": 4,
                "self_distill_batch_size": 16,
            },
        }
    )
    trainer = ControlTrainer(cfg)
    first = trainer.train_step()
    second = trainer.train_step()
    assert "self_distill/cfm_first" in first and "self_distill/cfm_first" not in second
    assert math.isfinite(first["self_distill/gap_before"]) and math.isfinite(first["self_distill/gap_after"])
    # 3 iterations x 4 steps x 2 envs of teacher rollouts, then two RL rollouts of 8 x 2.
    assert trainer.samples == 3 * 4 * 2 + 2 * 8 * 2
    # The RL optimiser is the fresh one: its state holds exactly the RL updates (1 epoch x 2 minibatches x 2 steps).
    steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert steps == {4}
    trainer.close()
