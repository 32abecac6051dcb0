"""The health signals on the real language trainer's rollouts: the alarm flags a run driven to collapse and
stays quiet on the shipped FPO + DiPOD config (CPU seconds, tiny Sudoku base, small batches)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dipod.bounds.masked import elbo_from_logprobs
from dipod.config import load_config
from dipod.diagnostics.health import CollapseAlarm, HealthConfig, health_signals
from dipod.language.trainer import LanguageTrainer

CONFIG = Path(__file__).resolve().parents[2] / "configs/language/sudoku_fpo_dipod.yaml"
SMALL = ["language.prompts_per_step=4", "language.group_size=4", "language.elbo_draws=2"]
STEPS = 8


def _run(overrides: list[str]) -> list:
    """STEPS rollout + update cycles (what train_step does), the alarm fed from each rollout."""
    trainer = LanguageTrainer(load_config(CONFIG, SMALL + overrides))
    alarm = CollapseAlarm(HealthConfig())
    reports = []
    for _ in range(STEPS):
        batch, metrics = trainer.rollout()
        elbo = elbo_from_logprobs(batch.old_logp, batch.draws, batch.valid, scale="sum")  # (B,)
        signals = health_signals(
            batch.completion_ids, batch.valid, batch.adv, trainer.cfg.language.group_size,
            eos_id=trainer.tokenizer.eos_token_id, pad_id=trainer.tokenizer.pad_token_id,
            token_logp=batch.old_logp, draw_mask=batch.draws.mask, elbo=elbo,
        )  # fmt: skip
        assert signals.effective_tokens == pytest.approx(metrics["effective_tokens"])  # the trainer's own count
        reports.append(alarm.update(signals))
        trainer.update(batch)
    return reports


def test_shipped_config_stays_quiet():
    torch.set_num_threads(1)
    reports = _run([])
    assert not any(r.fired for r in reports) and not reports[-1].collapsed
    assert all(0 < r.metrics["health/token_nll"] < 5 for r in reports)  # finite, in nats


def test_release_reference_term_at_beta_minus_half_is_flagged():
    # kl_beta 0.5 on the ELBO difference is DiPOD with beta = -0.5 (tests/objectives/test_release_equivalence):
    # it pushes the bound, and with it the policy, down until no group has a correct completion.
    torch.set_num_threads(1)
    reports = _run(["objective.dipod_beta=0", "objective.kl_beta=0.5", "optim.lr=3e-4"])
    assert reports[-1].collapsed
    assert reports[-1].metrics["health/collapsed"] == 1.0
    assert reports[-1].collapsed_at is not None and reports[-1].collapsed_at < STEPS
