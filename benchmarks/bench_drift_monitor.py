"""Cost of the drift monitor: probe time over training time at the default interval.

Training step (as a language trainer runs it, on the tiny transformer of bench_dipod_overhead):
sample B completions by iterative unmasking (one forward per revealed token), score the old policy
under K draws, then ``num_iterations`` FPO + DiPOD updates. Probe (every ``DEFAULT_EVERY`` steps):
sample ``probe_size`` fresh completions, then ``language_drift_probe`` with the config defaults
(K-draw ELBO, ``num_orders``-order importance-weighted log-likelihood, gradient cosine).

Without ``--quick`` the headline figure comes from the real ``LanguageTrainer`` on the shipped tiny
Sudoku config (configs/language/sudoku_fpo_dipod.yaml, drift defaults): its ``train_step`` against
``LanguageTrainer.drift_probe`` (fresh completions from the probe's own streams); the synthetic
set-up is then reported as ``synthetic_overhead_fraction``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dipod_overhead import VOCAB, TinyMaskedLM

from dipod.bounds.masked import draw_masks, masked_token_logprobs
from dipod.config import DriftConfig
from dipod.diagnostics.drift import DEFAULT_EVERY
from dipod.language.probe import language_drift_probe
from dipod.objectives import MaskedScores, dipod_term, get_objective, make_params

P, L, GROUP, PROMPTS, K, MU = 16, 16, 6, 4, 4, 4


@torch.no_grad()
def _sample(model: TinyMaskedLM, prompt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, L) completions: reveal one token per forward pass, most confident position first."""
    batch = prompt.shape[0]
    completion = torch.full((batch, L), model.mask_id)
    rows = torch.arange(batch)
    for _ in range(L):  # denoising steps
        logits = model(torch.cat([prompt, completion], -1))[:, P:]  # (B, L, V)
        probs = logits.softmax(-1)
        tokens = torch.multinomial(probs.reshape(-1, VOCAB), 1, generator=generator).view(batch, L)
        confidence = probs.gather(-1, tokens[..., None]).squeeze(-1).masked_fill(completion != model.mask_id, -1.0)
        pos = confidence.argmax(-1)
        completion[rows, pos] = tokens[rows, pos]
    return completion


def _rewards(completion: torch.Tensor) -> torch.Tensor:
    return (completion == 0).float().mean(-1)  # any cheap verifiable reward


def _train_step(model, optimizer, objective, cfg, generator) -> None:
    prompt = torch.randint(0, VOCAB, (PROMPTS, P), generator=generator).repeat_interleave(GROUP, 0)
    completion = _sample(model, prompt, generator)
    rewards = _rewards(completion).view(PROMPTS, GROUP)
    adv = (rewards - rewards.mean(-1, keepdim=True)).reshape(-1)
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, K, generator=generator, scheme="count")
    with torch.no_grad():
        old = MaskedScores(masked_token_logprobs(model, prompt, completion, draws, mask_id=model.mask_id), draws, valid)
    for _ in range(MU):
        new = MaskedScores(masked_token_logprobs(model, prompt, completion, draws, mask_id=model.mask_id), draws, valid)
        out = objective.fn(new, old, adv, cfg)
        loss = out.loss + dipod_term(out.elbo, cfg.dipod_beta).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _probe(model, cfg, drift: DriftConfig, generator) -> dict:
    prompts = max(1, drift.probe_size // GROUP)
    prompt = torch.randint(0, VOCAB, (prompts, P), generator=generator).repeat_interleave(GROUP, 0)
    completion = _sample(model, prompt, generator)
    rewards = _rewards(completion).view(prompts, GROUP)
    adv = (rewards - rewards.mean(-1, keepdim=True)).reshape(-1)
    valid = torch.ones_like(completion, dtype=torch.bool)
    return language_drift_probe(
        model,
        model.parameters(),
        prompt,
        completion,
        valid,
        adv,
        cfg,
        draw_masks(valid, K, generator=generator),
        mask_id=model.mask_id,
        num_orders=drift.num_orders,
        generator=generator,
    )


def _synthetic(quick: bool) -> tuple[float, float, DriftConfig]:
    """(median step seconds, median probe seconds, drift config) on the tiny transformer."""
    torch.manual_seed(0)  # benchmark set-up only
    model = TinyMaskedLM(max_len=P + L)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = make_params("language", "fpo")
    objective = get_objective("language", "fpo")
    drift = DriftConfig(every=DEFAULT_EVERY)
    generator = torch.Generator().manual_seed(0)
    _train_step(model, optimizer, objective, cfg, generator)  # warm-up
    _probe(model, cfg, drift, generator)
    step_times, probe_times = [], []
    for _ in range(2 if quick else 5):  # interleaved: a probe, then a few steps
        start = time.perf_counter()
        _probe(model, cfg, drift, generator)
        probe_times.append(time.perf_counter() - start)
        for _ in range(3):
            start = time.perf_counter()
            _train_step(model, optimizer, objective, cfg, generator)
            step_times.append(time.perf_counter() - start)
    return statistics.median(step_times), statistics.median(probe_times), drift


def _real_trainer() -> tuple[float, float]:
    """(median step seconds, median probe seconds) of the LanguageTrainer on the tiny Sudoku config."""
    from dipod.language.trainer import LanguageTrainer
    from dipod.runs.config import load_config

    root = Path(__file__).resolve().parents[1]
    trainer = LanguageTrainer(
        load_config(root / "configs/language/sudoku_fpo_dipod.yaml", [f"drift.every={DEFAULT_EVERY}"])
    )
    trainer.train_step()  # warm-up
    step_times, probe_times = [], []
    for _ in range(2):
        start = time.perf_counter()
        trainer.drift_probe()
        probe_times.append(time.perf_counter() - start)
        for _ in range(2):
            start = time.perf_counter()
            trainer.train_step()
            step_times.append(time.perf_counter() - start)
    return statistics.median(step_times), statistics.median(probe_times)


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    step, probe, drift = _synthetic(quick)
    synthetic = probe / (drift.every * step)
    reference = (
        f"synthetic: training steps of the same model (B={PROMPTS * GROUP}, L={L}, K={K}, mu={MU}, "
        f"{L} denoising steps); probe_size={drift.probe_size}, num_orders={drift.num_orders}, every={drift.every}"
    )
    if quick:
        figures = {"overhead_fraction": synthetic, "probe_over_step": probe / step, "every": float(drift.every)}
        return {"figures": figures, "reference": reference}
    real_step, real_probe = _real_trainer()
    figures = {
        "overhead_fraction": real_probe / (drift.every * real_step),
        "probe_over_step": real_probe / real_step,
        "every": float(drift.every),
        "synthetic_overhead_fraction": synthetic,
    }
    reference = (
        "LanguageTrainer.train_step on configs/language/sudoku_fpo_dipod.yaml (64 completions, L=16, mu=4, K=4) vs "
        f"LanguageTrainer.drift_probe with the drift defaults (probe_size={drift.probe_size}, "
        f"num_orders={drift.num_orders}) every {drift.every} steps; " + reference
    )
    return {"figures": figures, "reference": reference}


if __name__ == "__main__":
    print(run(quick=True))
