"""Drift monitor: gradient cosine, the language and control probes, and the scheduler."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dipod.bounds.flow import draw_flow_noise
from dipod.bounds.masked import all_orders, any_order_loglik, exact_loglik, order_iw_loglik
from dipod.config import ObjectiveConfig
from dipod.diagnostics import toy
from dipod.diagnostics.drift import (
    DriftMonitor,
    control_drift_probe,
    flat_grad,
    grad_cosine,
    language_drift_probe,
    language_loglik,
    probe_draws,
)

VOCAB, MASK_ID, P, L, B = 5, 5, 2, 3, 6


class TinyMaskedLM(torch.nn.Module):
    """Bidirectional: each position's logits depend on the whole (noisy) sequence through a mean embedding."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB + 1, 8, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(P + L, 8, generator=g))
        self.out = torch.nn.Parameter(torch.randn(16, VOCAB, generator=g) * 0.5)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed[ids] + self.pos[: ids.shape[1]]  # (N, T, 8)
        ctx = h.mean(1, keepdim=True).expand_as(h)
        return torch.cat([h, ctx], -1) @ self.out  # (N, T, V)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, VOCAB, (B, P), generator=g)
    completion = torch.randint(0, VOCAB, (B, L), generator=g)
    adv = torch.randn(B, generator=g)
    return prompt, completion, adv


def test_grad_cosine_extremes() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    v = torch.nn.Parameter(torch.tensor([3.0]))
    loss = (w**2).sum() + v.sum()
    assert grad_cosine(loss, 2 * loss, [w, v]) == pytest.approx(1.0, abs=1e-9)
    loss = (w**2).sum() + v.sum()
    assert grad_cosine(loss, -loss, [w, v]) == pytest.approx(-1.0, abs=1e-9)
    assert grad_cosine(w.sum(), v.sum(), [w, v]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(grad_cosine(w.sum(), 0.0 * v.sum(), [w, v]))  # a zero gradient has no direction
    tiny = 1e-9 * (w**2).sum()
    assert grad_cosine(tiny, 1e-9 * tiny, [w, v]) == pytest.approx(1.0)  # tiny gradients keep their direction
    assert w.grad is None and v.grad is None  # the probe never writes .grad


def test_flat_grad_zero_for_unused() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    v = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(flat_grad((3 * w).sum(), [w, v]), torch.tensor([3.0, 3.0, 0.0, 0.0]))


def test_language_loglik_exact_matches_core_enumeration() -> None:
    model = TinyMaskedLM()
    prompt, completion, _ = _batch()
    valid = torch.ones(B, L, dtype=torch.bool)
    loglik, used, exact = language_loglik(
        model, prompt, completion, valid, mask_id=MASK_ID, num_orders=6, generator=torch.Generator()
    )
    assert exact and used == 6
    torch.testing.assert_close(loglik, exact_loglik(model, prompt, completion, mask_id=MASK_ID))


def test_language_loglik_exact_with_invalid_tail() -> None:
    # Row 0 has 2 valid tokens: the exact loglik averages over the 2 orders of those, the third stays as context.
    model = TinyMaskedLM(1)
    prompt, completion, _ = _batch(1)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, 2] = False
    loglik, _, exact = language_loglik(
        model, prompt, completion, valid, mask_id=MASK_ID, num_orders=6, generator=torch.Generator()
    )
    assert exact
    orders = torch.tensor([[0, 1, 2], [1, 0, 2]])[None]
    expected = order_iw_loglik(any_order_loglik(model, prompt[:1], completion[:1], valid[:1], orders, mask_id=MASK_ID))
    torch.testing.assert_close(loglik[:1], expected)


def test_language_loglik_iw_when_too_many_orders() -> None:
    model = TinyMaskedLM()
    prompt, completion, _ = _batch()
    valid = torch.ones(B, L, dtype=torch.bool)
    exact = exact_loglik(model, prompt, completion, mask_id=MASK_ID).detach()
    estimates = []
    for seed in range(100):
        loglik, used, is_exact = language_loglik(
            model,
            prompt,
            completion,
            valid,
            mask_id=MASK_ID,
            num_orders=4,
            generator=torch.Generator().manual_seed(seed),
        )
        assert not is_exact and used == 4
        estimates.append(loglik.detach())
    # order ELBO = E[IW_1] <= E[IW_K] <= log pi; the average over 100 draws is within ~0.05 of E[IW_K].
    order_elbo = any_order_loglik(model, prompt, completion, valid, all_orders(L, B), mask_id=MASK_ID).mean(-1).detach()
    mean = torch.stack(estimates).mean(0)
    assert bool((mean <= exact + 0.15).all())
    assert bool((mean >= order_elbo.detach() - 0.15).all())
    assert float((exact - order_elbo).mean()) > 0.3  # the model is far from tight, so the check has teeth


@pytest.mark.parametrize("name", ["fpo", "spg", "diffu_grpo"])
def test_language_probe_keys_and_no_side_effects(name: str) -> None:
    model = TinyMaskedLM()
    prompt, completion, adv = _batch()
    valid = torch.ones(B, L, dtype=torch.bool)
    before = [p.detach().clone() for p in model.parameters()]
    out = language_drift_probe(
        model,
        model.parameters(),
        prompt,
        completion,
        valid,
        adv,
        ObjectiveConfig(name=name),
        mask_id=MASK_ID,
        num_draws=4,
        num_orders=6,
        generator=torch.Generator().manual_seed(0),
        block_length=2,
        prompt_mask_prob=0.0 if name == "fpo" else 0.3,
    )
    assert set(out) >= {"drift/elbo", "drift/loglik", "drift/gap", "drift/grad_cosine", "drift/num_orders"}
    assert out["drift/exact"] == 1.0 and out["drift/num_orders"] == 6.0
    assert out["drift/gap"] == pytest.approx(out["drift/loglik"] - out["drift/elbo"], abs=1e-5)
    assert -1.0 <= out["drift/grad_cosine"] <= 1.0
    torch.testing.assert_close(
        torch.tensor(out["drift/loglik"]), exact_loglik(model, prompt, completion, mask_id=MASK_ID).mean().detach()
    )
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert p.grad is None
        torch.testing.assert_close(p, p0)


def test_language_probe_cosine_one_when_bound_is_tight() -> None:
    # The toy's uniform model is context-free, so the ELBO is tight and its gradient is the true one
    # with exact draws; with the count scheme's random draws the cosine is still close to 1.
    model = toy.TwoTokenModel(3)
    g = torch.Generator().manual_seed(0)
    completion = torch.randint(0, 3, (32, 2), generator=g)
    adv = torch.randn(32, generator=g)
    out = language_drift_probe(
        model,
        model.parameters(),
        torch.zeros(32, 0, dtype=torch.long),
        completion,
        torch.ones(32, 2, dtype=torch.bool),
        adv,
        ObjectiveConfig(name="fpo"),
        mask_id=model.mask_id,
        num_draws=16,
        num_orders=2,
        generator=g,
    )
    assert out["drift/gap"] == pytest.approx(0.0, abs=1e-5)
    assert out["drift/grad_cosine"] > 0.9


def test_toy_grad_cosine_drops_for_inconsistent_model() -> None:
    rows = toy.train_toy(toy.ToyConfig(objective="fpo", vocab=3, steps=0))
    assert rows[0]["grad_cosine"] == pytest.approx(1.0, abs=1e-6)  # uniform start, exact draws


def test_control_probe() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1 + 1 + 2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def velocity(x: torch.Tensor, tau: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, tau[:, None], obs], -1))

    g = torch.Generator().manual_seed(0)
    obs, act, adv = torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g), torch.randn(8, generator=g)
    draws = draw_flow_noise(8, 4, 1, generator=g)
    out = control_drift_probe(
        velocity, net.parameters(), obs, act, adv, draws, ObjectiveConfig(name="fpo_pp"), sampling_steps=4
    )
    assert set(out) == {"drift/elbo", "drift/loglik", "drift/gap", "drift/grad_cosine"}
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert -1.0 <= out["drift/grad_cosine"] <= 1.0
    assert all(p.grad is None for p in net.parameters())


def test_monitor_schedule_and_time() -> None:
    calls = itertools.count()
    monitor = DriftMonitor(lambda: {"drift/gap": float(next(calls))}, every=3)
    outs = [monitor.maybe_probe(step) for step in range(1, 10)]
    assert [bool(o) for o in outs] == [False, False, True, False, False, True, False, False, True]
    assert outs[2]["drift/gap"] == 0.0 and outs[8]["drift/gap"] == 2.0
    assert monitor.calls == 3 and monitor.seconds >= 0.0 and "drift/seconds" in outs[2]
    assert not any(DriftMonitor(lambda: {}, every=0).maybe_probe(s) for s in range(1, 5))
    with pytest.raises(ValueError):
        DriftMonitor(lambda: {}, every=-1)


def test_probe_draws_one_step_and_prompt_masks() -> None:
    valid = torch.tensor([[True, True, False]] * 200)
    prompt_valid = torch.tensor([[False, True, True, True]] * 200)  # left padding never masked
    draws = probe_draws(
        "one_step", valid, 2, generator=torch.Generator().manual_seed(0), prompt_valid=prompt_valid,
        prompt_mask_prob=0.25,
    )  # fmt: skip
    assert bool(draws.mask.all()) and draws.mask.shape == (200, 2, 3)
    assert not bool(draws.prompt_mask[..., 0].any())
    assert float(draws.prompt_mask[..., 1:].float().mean()) == pytest.approx(0.25, abs=0.05)
    with pytest.raises(ValueError):
        probe_draws("flow", valid, 2, generator=torch.Generator())
