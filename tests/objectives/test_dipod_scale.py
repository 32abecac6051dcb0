"""The DiPOD term's scales: ``sum`` is the release's term bit for bit; ``mean`` and ``normalized`` keep what
beta means when completion lengths and advantage sizes change."""

from __future__ import annotations

import pytest
import torch

from dipod.objectives import dipod_term, ratio_ppo_loss
from dipod.objectives.dipod import advantage_scale


def _release_term(elbo_fresh: torch.Tensor, beta: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The term as it was before scales existed (the code of the release's behaviour, copied)."""
    if weights is None:
        mean_elbo = elbo_fresh.mean()
    else:
        weights = weights.to(elbo_fresh.dtype)
        mean_elbo = (weights * elbo_fresh).sum() / weights.sum().clamp(min=1e-12)
    return -beta * mean_elbo


@pytest.mark.parametrize("weighted", [False, True])
def test_sum_is_the_release_term_exactly(weighted: bool):
    g = torch.Generator().manual_seed(0)
    elbo = (-10 * torch.rand(7, generator=g, dtype=torch.float64)).requires_grad_()
    weights = torch.randint(1, 20, (7,), generator=g) if weighted else None
    new = dipod_term(elbo, 0.05, weights)
    default = dipod_term(elbo, 0.05, weights, scale="sum")
    old = _release_term(elbo, 0.05, weights)
    assert torch.equal(new.loss, old) and torch.equal(default.loss, old)  # bit for bit, not approximately
    grad_new = torch.autograd.grad(new.loss, elbo)[0]
    grad_old = torch.autograd.grad(old, elbo)[0]
    assert torch.equal(grad_new, grad_old)


def _per_token_batch(logp: list[float], lengths: list[int], repeat: int = 1):
    """Completions whose every token has log-prob ``logp[b]`` (a leaf with gradient); ``repeat`` writes each
    completion ``repeat`` times over (the same text, longer). Returns (theta, sequence ELBO (B,), lengths)."""
    theta = torch.tensor(logp, dtype=torch.float64, requires_grad=True)  # (B,) per-token log-prob
    lengths_t = torch.tensor(lengths, dtype=torch.float64) * repeat  # (B,)
    return theta, theta * lengths_t, lengths_t  # ELBO_b = L_b * theta_b for a factorised model


def test_mean_is_per_token_and_invariant_to_length():
    theta, elbo, lengths = _per_token_batch([-0.5, -2.0], [3, 1])
    out = dipod_term(elbo, 0.1, scale="mean", lengths=lengths)
    # ELBO per token over the batch: (3 * -0.5 + 1 * -2.0) / 4 = -0.875 -> term = 0.0875
    assert out.loss.item() == pytest.approx(0.0875)
    grad = torch.autograd.grad(out.loss, theta)[0]
    torch.testing.assert_close(grad, torch.tensor([-0.1 * 3 / 4, -0.1 * 1 / 4], dtype=torch.float64))
    # the same completions written 5 times over: 'sum' grows 5x, 'mean' is unchanged (value and gradient)
    theta5, elbo5, lengths5 = _per_token_batch([-0.5, -2.0], [3, 1], repeat=5)
    long = dipod_term(elbo5, 0.1, scale="mean", lengths=lengths5)
    assert long.loss.item() == pytest.approx(out.loss.item())
    torch.testing.assert_close(torch.autograd.grad(long.loss, theta5)[0], grad)
    assert dipod_term(elbo5, 0.1).loss.item() == pytest.approx(5 * dipod_term(elbo, 0.1).loss.item())
    # a per-token ELBO (SPG's scale) gives the same term
    per_token = dipod_term(elbo / lengths, 0.1, scale="mean", lengths=lengths, elbo_scale="mean")
    assert per_token.loss.item() == pytest.approx(out.loss.item())


def _pg_plus_dipod_grad(adv: torch.Tensor, repeat: int, scale: str) -> torch.Tensor:
    """Gradient in theta of FPO (at rho = 1) + DiPOD(beta = 0.1), completions written ``repeat`` times over."""
    theta, elbo, lengths = _per_token_batch([-0.5, -2.0, -1.0, -0.2], [3, 1, 2, 4], repeat)
    pg = ratio_ppo_loss(elbo, elbo.detach(), adv, clip_low=0.2, clip_high=0.2)  # rho = 1: no clipping
    reg = dipod_term(elbo, 0.1, scale=scale, lengths=lengths, adv_scale=advantage_scale(adv))
    return torch.autograd.grad(pg.loss + reg.loss, theta)[0]


def test_normalized_keeps_the_ratio_to_the_pg_term_at_any_advantage_scale_and_length():
    adv = torch.tensor([0.3, -0.1, -0.4, 0.2], dtype=torch.float64)
    base = _pg_plus_dipod_grad(adv, 1, "normalized")
    # PG gradient -A_b L_b / B and DiPOD gradient -beta mean|A| L_b / B both scale with |A| and with L:
    # 10x advantages or completions 3x longer scale the whole update, leaving its direction unchanged.
    torch.testing.assert_close(_pg_plus_dipod_grad(10 * adv, 1, "normalized"), 10 * base)
    torch.testing.assert_close(_pg_plus_dipod_grad(adv, 3, "normalized"), 3 * base)
    # hand value: mean|A| = 0.25; d/d theta_0 = -(0.3 * 3 + 0.1 * 0.25 * 3) / 4 = -0.24375
    assert base[0].item() == pytest.approx(-0.24375)
    # 'sum' does not have this property: its DiPOD part ignores the advantages' size ...
    with pytest.raises(AssertionError):
        torch.testing.assert_close(_pg_plus_dipod_grad(10 * adv, 1, "sum"), 10 * _pg_plus_dipod_grad(adv, 1, "sum"))
    # ... and 'mean' ignores the length the sum-ELBO PG term grows with
    with pytest.raises(AssertionError):
        torch.testing.assert_close(_pg_plus_dipod_grad(adv, 3, "mean"), 3 * _pg_plus_dipod_grad(adv, 1, "mean"))


def test_normalized_shares_one_scale_across_micro_batches():
    adv = torch.tensor([0.4, -0.4, 0.0, 0.0])
    assert advantage_scale(adv).item() == pytest.approx(0.2)  # (0.4 + 0.4) / 4
    assert advantage_scale(adv, torch.tensor([1.0, 1.0, 2.0, 4.0])).item() == pytest.approx(0.8 / 8)
    elbo = torch.tensor([-4.0, -2.0, -6.0, -8.0])
    whole = dipod_term(elbo, 0.5, scale="normalized", adv_scale=advantage_scale(adv)).loss
    halves = sum(
        dipod_term(elbo[rows], 0.5, scale="normalized", adv_scale=advantage_scale(adv)).loss / 2
        for rows in (slice(0, 2), slice(2, 4))
    )
    assert whole.item() == pytest.approx(halves.item())  # -0.5 * 0.2 * -5 = 0.5 either way
    assert whole.item() == pytest.approx(0.5)
    zero = dipod_term(elbo, 0.5, scale="normalized", adv_scale=advantage_scale(torch.zeros(4)))
    assert zero.loss.item() == 0.0  # no policy gradient, nothing to correct


def test_scale_arguments_are_checked():
    elbo = torch.zeros(2)
    with pytest.raises(ValueError, match="needs lengths"):
        dipod_term(elbo, 0.1, scale="mean")
    with pytest.raises(ValueError, match="do not pass weights"):
        dipod_term(elbo, 0.1, torch.ones(2), scale="mean", lengths=torch.ones(2))
    with pytest.raises(ValueError, match="needs adv_scale"):
        dipod_term(elbo, 0.1, scale="normalized")
    with pytest.raises(ValueError, match="unknown dipod scale 'token'"):
        dipod_term(elbo, 0.1, scale="token")
