"""Cost of the health metrics: a training step with them over the same step without.

The real ``LanguageTrainer`` on the shipped tiny Sudoku config (configs/language/sudoku_fpo_dipod.yaml:
64 completions, L = 16, K = 4, mu = 4) runs ``train_step`` (rollout, old scores, mu FPO + DiPOD updates).
On a real rollout of the same trainer (``trainer.rollout()``) the health computation a step adds is
timed: the per-token ELBO's input from the stored old scores (``elbo_from_logprobs``), ``health_signals``
on completions, validity, advantages, old token log-probs and draw masks, then ``CollapseAlarm.update``.
``step_time_ratio`` = (median step + median health computation) / median step. Health calls are repeated
on each rollout (``HEALTH_REPS``) since one takes far less time than the timer's noise on a whole step.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from dipod.bounds.masked import elbo_from_logprobs
from dipod.diagnostics.health import CollapseAlarm, HealthConfig, health_signals

HEALTH_REPS = 20
CONFIG = "configs/language/sudoku_fpo_dipod.yaml"


def _health(trainer, batch, alarm: CollapseAlarm) -> float:
    """Seconds for one step's health metrics on ``batch``, as the trainer would compute them."""
    lang = trainer.cfg.language
    start = time.perf_counter()
    elbo = elbo_from_logprobs(batch.old_logp, batch.draws, batch.valid, scale=trainer.cfg.objective.elbo_scale)
    signals = health_signals(
        batch.completion_ids, batch.valid, batch.adv, lang.group_size,
        eos_id=trainer.tokenizer.eos_token_id, pad_id=trainer.tokenizer.pad_token_id,
        token_logp=batch.old_logp, draw_mask=batch.draws.mask, elbo=elbo,
        elbo_scale=trainer.cfg.objective.elbo_scale,
    )  # fmt: skip
    alarm.update(signals)
    return time.perf_counter() - start


def run(quick: bool) -> dict:
    from dipod.language.trainer import LanguageTrainer
    from dipod.runs.config import load_config

    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    trainer = LanguageTrainer(load_config(root / CONFIG, ["health.enabled=false"]))  # steps without them
    alarm = CollapseAlarm(HealthConfig())
    trainer.train_step()  # warm-up
    step_times, health_times = [], []
    for _ in range(3 if quick else 8):
        start = time.perf_counter()
        trainer.train_step()
        step_times.append(time.perf_counter() - start)
        batch, _ = trainer.rollout()  # a real rollout to measure on (not timed)
        health_times += [_health(trainer, batch, alarm) for _ in range(HEALTH_REPS)]
    step, health = statistics.median(step_times), statistics.median(health_times)
    return {
        "figures": {
            "step_time_ratio": (step + health) / step,
            "health_ms": 1e3 * health,
            "step_ms": 1e3 * step,
        },
        "reference": f"LanguageTrainer.train_step on {CONFIG} (64 completions, L=16, K=4, mu=4) without health "
        f"metrics; health = ELBO from the stored old scores + health_signals + CollapseAlarm.update on real "
        f"rollouts of the same trainer; medians of {len(step_times)} steps and {len(health_times)} health calls",
    }


if __name__ == "__main__":
    print(run(quick=True))
