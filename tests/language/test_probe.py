"""The language drift probe and the one draw dispatch: exact log-likelihoods, keys, no side effects."""

from __future__ import annotations

import pytest
import torch

from dipod.bounds.masked import (
    all_orders,
    any_order_loglik,
    draw_masks,
    exact_loglik,
    order_iw_loglik,
    order_states,
    random_orders,
)
from dipod.diagnostics import toy
from dipod.diagnostics.drift import flat_grad, true_pg_loss
from dipod.language.config import LanguageConfig
from dipod.language.draws import draw_noise
from dipod.language.probe import language_drift_probe, language_loglik, order_loglik_grad
from dipod.objectives import get_objective, make_params

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


def _draws(name: str, valid: torch.Tensor, prompt: torch.Tensor):
    """Fresh draws of the objective's kind from the draw dispatch (SPG blocks of 2, prompt masks for SPG/diffu-GRPO)."""
    lang = LanguageConfig(elbo_draws=4, spg_block_length=2, prompt_mask_prob=0.0 if name == "fpo" else 0.3)
    kind = get_objective("language", name).draws
    return draw_noise(
        kind, valid, torch.ones_like(prompt, dtype=torch.bool), lang, generator=torch.Generator().manual_seed(0)
    )


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
        make_params("language", name),
        _draws(name, valid, prompt),
        mask_id=MASK_ID,
        num_orders=6,
        generator=torch.Generator().manual_seed(0),
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
        make_params("language", "fpo"),
        draw_masks(torch.ones(32, 2, dtype=torch.bool), 16, generator=g),
        mask_id=model.mask_id,
        num_orders=2,
        generator=g,
    )
    assert out["drift/gap"] == pytest.approx(0.0, abs=1e-5)
    assert out["drift/grad_cosine"] > 0.9


def test_toy_grad_cosine_drops_for_inconsistent_model() -> None:
    rows = toy.train_toy(toy.ToyConfig(objective="fpo", vocab=3, steps=0))
    assert rows[0]["grad_cosine"] == pytest.approx(1.0, abs=1e-6)  # uniform start, exact draws


def test_draw_noise_one_step_and_prompt_masks() -> None:
    valid = torch.tensor([[True, True, False]] * 200)
    prompt_valid = torch.tensor([[False, True, True, True]] * 200)  # left padding never masked
    lang = LanguageConfig(elbo_draws=2, prompt_mask_prob=0.25)
    draws = draw_noise("one_step", valid, prompt_valid, lang, generator=torch.Generator().manual_seed(0))
    assert bool(draws.mask.all()) and draws.mask.shape == (200, 2, 3)
    assert not bool(draws.prompt_mask[..., 0].any())
    assert float(draws.prompt_mask[..., 1:].float().mean()) == pytest.approx(0.25, abs=0.05)
    with pytest.raises(ValueError):
        draw_noise("flow", valid, prompt_valid, lang, generator=torch.Generator())


def test_chunked_loglik_gradient_equals_autograd_of_the_true_pg_loss() -> None:
    """The probe's chunked two-pass gradient is the gradient of -mean(A * logmeanexp_k order_loglik)."""
    model = TinyMaskedLM()
    prompt, completion, adv = _batch()
    valid = torch.arange(L)[None, :] < torch.tensor([3, 2, 3, 1, 3, 2])[:, None]  # unequal lengths
    orders = random_orders(valid, 4, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    order_loglik = any_order_loglik(model, prompt, completion, valid, orders, mask_id=MASK_ID)  # (B, K)
    expected = flat_grad(true_pg_loss(order_iw_loglik(order_loglik), adv), params)
    states = order_states(prompt, completion, valid, orders, mask_id=MASK_ID)
    coef = -adv[:, None] / B * order_loglik.detach().softmax(-1)
    for max_rows in (5, 10_000):  # chunks that split orders and samples, and one pass
        got = order_loglik_grad(model, params, states, coef, max_rows=max_rows)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_probe_metrics_do_not_depend_on_the_chunk_size() -> None:
    model = TinyMaskedLM()
    prompt, completion, adv = _batch()
    valid = torch.ones(B, L, dtype=torch.bool)
    fpo = make_params("language", "fpo")

    def probe(max_rows: int) -> dict[str, float]:
        return language_drift_probe(
            model, model.parameters(), prompt, completion, valid, adv, fpo, _draws("fpo", valid, prompt),
            mask_id=MASK_ID, num_orders=4, generator=torch.Generator().manual_seed(0), max_rows=max_rows,
        )  # fmt: skip

    runs = [probe(7), probe(4096)]
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert runs[0][key] == pytest.approx(runs[1][key], rel=1e-5, abs=1e-6), key


def test_probe_with_logits_at_the_predicted_positions_equals_the_full_logits_path() -> None:
    from dipod.language.model_tiny import TinyConfig
    from dipod.language.model_tiny import TinyMaskedLM as Tiny

    model = Tiny(TinyConfig(vocab_size=VOCAB + 1, mask_token_id=MASK_ID, pad_token_id=0, eos_token_id=1, max_seq_len=8,
                            n_layer=1, n_head=2, n_embd=16), generator=torch.Generator().manual_seed(0))  # fmt: skip
    prompt, completion, adv = _batch()
    valid = torch.arange(L)[None, :] < torch.tensor([3, 2, 3, 1, 3, 2])[:, None]
    fpo = make_params("language", "fpo")

    def probe(logits_at: str) -> dict[str, float]:
        return language_drift_probe(
            model, model.parameters(), prompt, completion, valid, adv, fpo, _draws("fpo", valid, prompt),
            mask_id=MASK_ID, num_orders=4, generator=torch.Generator().manual_seed(0), max_rows=5, logits_at=logits_at,
        )  # fmt: skip

    masked, full = probe("masked"), probe("all")
    for key in full:
        assert masked[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key
