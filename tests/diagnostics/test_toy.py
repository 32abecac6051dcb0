"""Exact quantities of the two-token toy."""

from __future__ import annotations

import math

import pytest
import torch

from dipod.bounds.masked import all_orders, any_order_loglik, order_elbo
from dipod.diagnostics import toy

VOCAB = 3


def _random_model(seed: int) -> toy.TwoTokenModel:
    model = toy.TwoTokenModel(VOCAB)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.w1.copy_(torch.randn(model.w1.shape, generator=g) * 2)
        model.w2.copy_(torch.randn(model.w2.shape, generator=g) * 2)
    return model


def _context_free_model(seed: int) -> toy.TwoTokenModel:
    """Each position's logits ignore the other position: every row of a table is the same."""
    model = toy.TwoTokenModel(VOCAB)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.w1.copy_(torch.randn(1, VOCAB, generator=g).expand(VOCAB + 1, -1))
        model.w2.copy_(torch.randn(1, VOCAB, generator=g).expand(VOCAB + 1, -1))
    return model


def _conditional(table: torch.Tensor, state: int, symbol: int) -> float:
    return float(table[state].detach().log_softmax(-1)[symbol])


@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_loglik_normalises(seed: int) -> None:
    model = _random_model(seed)
    outcomes = toy.all_outcomes(VOCAB)
    total = toy.loglik(model, outcomes).exp().sum().detach()
    assert float(total) == pytest.approx(1.0, abs=1e-5)


@torch.no_grad()
def test_loglik_matches_hand_formula() -> None:
    # pi(a, b) = 1/2 p1(a | M) p2(b | a) + 1/2 p2(b | M) p1(a | b), mask state M = V.
    model = _random_model(3)
    mask = VOCAB
    for a in range(VOCAB):
        for b in range(VOCAB):
            order_12 = _conditional(model.w1, mask, a) + _conditional(model.w2, a, b)
            order_21 = _conditional(model.w2, mask, b) + _conditional(model.w1, b, a)
            expected = math.log(0.5 * math.exp(order_12) + 0.5 * math.exp(order_21))
            got = float(toy.loglik(model, torch.tensor([[a, b]])))
            assert got == pytest.approx(expected, abs=1e-5)
            elbo = float(toy.exact_elbo(model, torch.tensor([[a, b]])))
            assert elbo == pytest.approx(0.5 * (order_12 + order_21), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_gap_nonnegative_and_positive_for_inconsistent_model(seed: int) -> None:
    model = _random_model(seed)
    outcomes = toy.all_outcomes(VOCAB)
    gaps = toy.loglik(model, outcomes) - toy.exact_elbo(model, outcomes)
    assert bool((gaps >= -1e-5).all())
    assert float(gaps.max()) > 1e-3  # a random table's two orders disagree somewhere


@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_elbo_equals_loglik_for_context_free_model(seed: int) -> None:
    model = _context_free_model(seed)
    outcomes = toy.all_outcomes(VOCAB)
    torch.testing.assert_close(toy.exact_elbo(model, outcomes), toy.loglik(model, outcomes), atol=1e-5, rtol=0)


@torch.no_grad()
def test_enumerated_count_elbo_is_the_order_average() -> None:
    # The count scheme's expectation equals the mean over both orders of the AO-AR log-likelihood.
    model = _random_model(4)
    outcomes = toy.all_outcomes(VOCAB)
    empty = torch.zeros(outcomes.shape[0], 0, dtype=torch.long)
    valid = torch.ones_like(outcomes, dtype=torch.bool)
    per_order = any_order_loglik(model, empty, outcomes, valid, all_orders(2, outcomes.shape[0]), mask_id=model.mask_id)
    torch.testing.assert_close(toy.exact_elbo(model, outcomes), order_elbo(per_order), atol=1e-5, rtol=0)


@torch.no_grad()
def test_sample_matches_pi() -> None:
    model = _random_model(5)
    samples = toy.sample(model, 20000, torch.Generator().manual_seed(0))
    counts = torch.bincount(samples[:, 0] * VOCAB + samples[:, 1], minlength=VOCAB**2).float() / 20000
    probs = toy.loglik(model, toy.all_outcomes(VOCAB)).exp().detach()
    assert float((counts - probs).abs().max()) < 0.02


def test_exact_stats_of_uniform_model() -> None:
    model = toy.TwoTokenModel(VOCAB)  # zero tables: uniform, context-free
    stats = toy.exact_stats(model, toy.reward_table(VOCAB, "match"))
    assert stats.reward == pytest.approx(1 / VOCAB, abs=1e-6)  # VOCAB matching outcomes of VOCAB^2
    assert stats.gap == pytest.approx(0.0, abs=1e-6)
    assert stats.loglik == pytest.approx(-2 * math.log(VOCAB), abs=1e-5)


@pytest.mark.parametrize("objective", ["fpo", "spg"])
def test_training_improves_reward_and_rows_are_reproducible(objective: str) -> None:
    cfg = toy.ToyConfig(objective=objective, beta=0.05, vocab=VOCAB, steps=15, seed=1)
    rows = toy.train_toy(cfg)
    assert len(rows) == cfg.steps + 1
    assert rows[-1]["reward"] > rows[0]["reward"] + 0.1
    assert all(r["gap"] >= -1e-5 for r in rows)
    assert toy.train_toy(cfg) == rows  # explicit generator: same seed, same trajectory


def test_beta_fn_is_applied() -> None:
    cfg = toy.ToyConfig(objective="fpo", beta=0.05, vocab=VOCAB, steps=3)
    rows = toy.train_toy(cfg, beta_fn=lambda step, row, beta: beta * 2)
    assert [r["beta"] for r in rows] == pytest.approx([0.05, 0.1, 0.2, 0.4])
