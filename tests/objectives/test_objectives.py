"""Objectives at hand-computed values, their gradients, common random numbers and the DiPOD term."""

import math

import pytest
import torch

from dipod.bounds.masked import draw_masks, masked_token_logprobs
from dipod.objectives import (
    MaskedScores,
    diffu_grpo_loss,
    dipod_term,
    elbo_difference_penalty,
    elbo_k3_kl,
    fpo_pp_loss,
    get_objective,
    k3_kl,
    make_params,
    ratio_ppo_loss,
    spg_loss,
)
from dipod.objectives.fpo_pp import straight_through_clamp_max
from tests.bounds.tiny_models import MLPMaskedNet


def test_ratio_ppo_hand_values():
    # rho = 1.5, 0.5, 1.1, 0.7 ; A = +1, -2, +1, +2 ; clip 0.2
    elbo_old = torch.zeros(4)
    elbo_new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7])).requires_grad_()
    adv = torch.tensor([1.0, -2.0, 1.0, 2.0])
    out = ratio_ppo_loss(elbo_new, elbo_old, adv, clip_low=0.2, clip_high=0.2)
    # min(rho A, clip(rho) A): min(1.5, 1.2) = 1.2 ; min(-1.0, -1.6) = -1.6 ; 1.1 ; min(1.4, 1.6) = 1.4
    assert out.loss.item() == pytest.approx(-(1.2 - 1.6 + 1.1 + 1.4) / 4)
    # clipped branch active (gradient zero) for samples 0 and 1 only
    assert out.stats["clip_frac"].item() == pytest.approx(0.5)
    assert out.stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1 + 0.7) / 4)
    out.loss.backward()
    # d/d elbo of -rho A / 4 = -rho A / 4 where unclipped
    torch.testing.assert_close(elbo_new.grad, torch.tensor([0.0, 0.0, -1.1 / 4, -1.4 / 4]))


def test_ratio_ppo_asymmetric_clip():
    out = ratio_ppo_loss(torch.log(torch.tensor([1.4])), torch.zeros(1), torch.ones(1), clip_low=0.2, clip_high=0.5)
    assert out.loss.item() == pytest.approx(-1.4)  # inside [0.8, 1.5]: unclipped
    assert out.stats["clip_frac"].item() == 0


def test_fpo_pp_aspo_branches():
    cfm_old = torch.zeros(2, 2)
    # log r = l_old - l_new: r = [[1.02, 0.95], [1.0, e^-0.1]]
    cfm_new = -torch.log(torch.tensor([[1.02, 0.95], [1.0, math.exp(-0.1)]]))
    cfm_new.requires_grad_()
    adv = torch.tensor([1.0, -2.0])
    out = fpo_pp_loss(cfm_new, cfm_old, adv, clip=0.01, log_ratio_max=3.0, neg_adv_cfm_clamp=None)
    r = torch.exp(cfm_old - cfm_new.detach())
    # A > 0: max(-A r, -A clip(r, .99, 1.01)) ; A < 0: -(r A - |A| / (2c) (r - 1)^2)
    pos = [max(-1.0 * r[0, 0], -1.01), max(-1.0 * r[0, 1], -0.99)]
    neg = [-(r[1, j] * -2.0 - 2.0 / 0.02 * (r[1, j] - 1) ** 2) for j in range(2)]
    assert out.loss.item() == pytest.approx(float(sum(pos) + sum(neg)) / 4, rel=1e-6)
    assert out.stats["clip_frac"].item() == pytest.approx(0.25)  # only draw (0, 0) is clipped
    torch.testing.assert_close(out.elbo, -cfm_new.mean(-1))
    ppo = fpo_pp_loss(cfm_new, cfm_old, adv, clip=0.01, trust_region="ppo", neg_adv_cfm_clamp=None)
    # A < 0 with PPO clipping: max(2 r, 2 clip(r)) -> 2 * 1.0 and 2 * 0.99
    ppo_neg = [max(2.0 * r[1, 0], 2.0 * 1.0), max(2.0 * r[1, 1], 2.0 * 0.99)]
    assert ppo.loss.item() == pytest.approx(float(sum(pos) + sum(ppo_neg)) / 4, rel=1e-6)


def test_fpo_pp_clamps():
    x = torch.tensor([1.0, 5.0], requires_grad=True)
    y = straight_through_clamp_max(x, 3.0)
    assert y.tolist() == [1.0, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]  # straight-through
    # negative advantage: the current loss is clamped at 20, so pushing it higher yields no gradient
    cfm_new = torch.tensor([[25.0]], requires_grad=True)
    out = fpo_pp_loss(cfm_new, torch.tensor([[24.0]]), torch.tensor([-1.0]), clip=0.5, neg_adv_cfm_clamp=20.0)
    out.loss.backward()
    assert cfm_new.grad.item() == 0.0
    assert out.stats["ratio_mean"].item() == pytest.approx(math.exp(3.0))  # log r = 24 - 20 = 4, clamped to 3


def test_spg_hand_values_and_length_weighting():
    elbo = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    eubo = torch.tensor([-0.5, -1.0, -1.5], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.0])
    lengths = torch.tensor([2, 4, 4])
    out = spg_loss(elbo, eubo, adv, lengths, mix_weight=0.5)
    # scores: -1 (A > 0) ; 0.5 * -1 + 0.5 * -2 = -1.5 ; mixture -2.25 (A = 0 adds nothing)
    expected = (-(1.0) * -1.0 * 2 - (-1.0) * -1.5 * 4) / 10
    assert out.loss.item() == pytest.approx(expected)
    out.loss.backward()
    torch.testing.assert_close(elbo.grad, torch.tensor([-2 / 10, 0.5 * 4 / 10, 0.0]))
    torch.testing.assert_close(eubo.grad, torch.tensor([0.0, 0.5 * 4 / 10, 0.0]))


def test_diffu_grpo_token_level_ratio():
    old = torch.zeros(2, 3)
    new = torch.log(torch.tensor([[1.5, 1.0, 9.0], [0.5, 1.0, 1.0]])).requires_grad_()
    valid = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([1.0, -1.0])
    out = diffu_grpo_loss(new, old, adv, valid, clip_low=0.2, clip_high=0.2)
    # d1's token mean over the 5 valid tokens: row 0 gives -(min(1.5, 1.2) + 1.0), row 1 -(min(-0.5, -0.8) - 1 - 1);
    # the 9.0 is padding
    expected = (-(1.2 + 1.0) + (0.8 + 1 + 1)) / 5
    assert out.loss.item() == pytest.approx(expected)
    assert out.stats["clip_frac"].item() == pytest.approx(2 / 5)


def test_reference_terms():
    elbo, ref = torch.tensor([-1.0, -3.0], requires_grad=True), torch.tensor([-2.0, -2.0])
    out = elbo_difference_penalty(elbo, ref, 0.04)
    assert out.loss.item() == pytest.approx(0.04 * 0.0)
    out.loss.backward()
    torch.testing.assert_close(elbo.grad, torch.tensor([0.02, 0.02]))  # pushes the ELBO down
    new = torch.log(torch.tensor([[0.5, 0.25]]))
    ref_t = torch.log(torch.tensor([[0.25, 0.25]]))
    kl = k3_kl(new, ref_t, torch.ones(1, 2, dtype=torch.bool), 1.0)
    # r = log(0.5) - ... : exp(r) - r - 1 with r = log(0.25/0.5) = -log 2 -> 0.5 + log 2 - 1 ; second token 0
    assert kl.loss.item() == pytest.approx((0.5 + math.log(2) - 1) / 2)
    valid = torch.tensor([[True, True], [True, False]])  # d1's token mean: 3 tokens, not a mean of row means
    kl = k3_kl(torch.cat([new, new]), torch.cat([ref_t, ref_t]), valid, 1.0)
    assert kl.loss.item() == pytest.approx(2 * (0.5 + math.log(2) - 1) / 3)


def test_elbo_k3_is_a_divergence_whose_gradient_pulls_towards_the_reference():
    ref = torch.tensor([-2.0, -2.0, -1.0])
    elbo = torch.tensor([-1.0, -3.0, -1.0], requires_grad=True)  # above, below and at the reference
    out = elbo_k3_kl(elbo, ref, 0.1)
    r = ref - elbo.detach()
    assert out.loss.item() == pytest.approx(0.1 * float((r.exp() - r - 1).mean()))
    assert out.stats["kl_ref"].item() > 0
    out.loss.backward()
    torch.testing.assert_close(elbo.grad, 0.1 * (1 - r.exp()) / 3)  # autograd agrees with d/dELBO of k3
    assert elbo.grad[0] > 0 and elbo.grad[1] < 0 and elbo.grad[2] == 0  # descent moves each ELBO to the reference
    same = elbo_k3_kl(ref.clone().requires_grad_(), ref, 0.1)
    assert same.loss.item() == 0.0


def test_dipod_term_value_and_gradient():
    elbo = torch.tensor([-4.0, -2.0], requires_grad=True)
    out = dipod_term(elbo, 0.05)
    assert out.loss.item() == pytest.approx(0.05 * 3.0)
    assert out.stats["dipod_reg"].item() == pytest.approx(0.15)
    out.loss.backward()
    torch.testing.assert_close(elbo.grad, torch.tensor([-0.025, -0.025]))  # raises every ELBO
    weighted = dipod_term(elbo.detach(), 0.05, weights=torch.tensor([1.0, 3.0]))
    assert weighted.loss.item() == pytest.approx(-0.05 * (-4.0 - 6.0) / 4)


def _language_batch(seed=0):
    net = MLPMaskedNet(3, 6, seed=seed)
    g = torch.Generator().manual_seed(seed)
    prompt, completion = torch.randint(0, 3, (4, 2), generator=g), torch.randint(0, 3, (4, 4), generator=g)
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, 3, generator=g)
    return net, prompt, completion, valid, draws


@pytest.mark.parametrize("name", ["fpo", "spg"])
def test_common_random_numbers_give_ratio_one_and_the_elbo_policy_gradient(name):
    net, prompt, completion, valid, draws = _language_batch()
    cfg = make_params("language", name)
    with torch.no_grad():
        old = MaskedScores(masked_token_logprobs(net, prompt, completion, draws, mask_id=3), draws, valid)
    new = MaskedScores(masked_token_logprobs(net, prompt, completion, draws, mask_id=3), draws, valid)
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75])
    out = get_objective("language", name).fn(new, old, adv, cfg)
    if name == "fpo":
        assert out.stats["ratio_mean"].item() == 1.0  # exactly, not approximately
        pg = torch.autograd.grad(out.loss, net.out, retain_graph=True)[0]
        reference = torch.autograd.grad(-(adv * new.elbo("sum")).mean(), net.out)[0]
        torch.testing.assert_close(pg, reference)
    assert torch.isfinite(out.loss)


def test_dipod_adds_no_forward_pass():
    net, prompt, completion, valid, draws = _language_batch()
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    cfg = make_params("language", "fpo")
    with torch.no_grad():
        old = MaskedScores(masked_token_logprobs(net, prompt, completion, draws, mask_id=3), draws, valid)
    counts = []
    for beta in (0.0, 0.05):
        calls.clear()
        new = MaskedScores(masked_token_logprobs(net, prompt, completion, draws, mask_id=3), draws, valid)
        out = get_objective("language", "fpo").fn(new, old, torch.ones(4), cfg)
        total = out + dipod_term(out.elbo, beta)
        total.loss.backward()
        counts.append(len(calls))
    assert counts == [1, 1]
    assert "dipod_reg" in total.stats and "pg_loss" in total.stats


def test_dipod_gradient_is_beta_times_elbo_gradient():
    net, prompt, completion, valid, draws = _language_batch(1)
    new = MaskedScores(masked_token_logprobs(net, prompt, completion, draws, mask_id=3), draws, valid)
    elbo = new.elbo("sum")
    grad = torch.autograd.grad(dipod_term(elbo, 0.2).loss, net.inp, retain_graph=True)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(-0.2 * elbo.mean(), net.inp)[0])


def test_control_fpo_is_the_averaged_ratio():
    cfm_old = torch.tensor([[1.0, 2.0]])
    cfm_new = torch.tensor([[0.8, 1.6]])
    cfg = make_params("language", "fpo", clip_high=10.0, clip_low=0.5)
    out = get_objective("control", "fpo").fn(cfm_new, cfm_old, torch.ones(1), cfg)
    assert out.stats["ratio_mean"].item() == pytest.approx(math.exp(0.3))  # exp(mean(l_old - l_new))


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown language objective 'ppo'; choose one of: diffu_grpo, fpo, spg"):
        get_objective("language", "ppo")


def test_fpo_pp_symmetric_cfm_loss_clamp_as_released():
    # cfm_loss_clamp = 20 clamps old and current losses: l_old 30 -> 20, l_new 25 -> 20, log r = 0
    cfm_new = torch.tensor([[25.0, 1.0]], requires_grad=True)
    cfm_old = torch.tensor([[30.0, 1.5]])
    out = fpo_pp_loss(cfm_new, cfm_old, torch.tensor([1.0]), clip=0.5, cfm_loss_clamp=20.0, neg_adv_cfm_clamp=None)
    # draw 0: log r = 20 - 20 = 0 ; draw 1: log r = 1.5 - 1.0 = 0.5
    assert out.stats["log_ratio_mean"].item() == pytest.approx(0.25)
    assert out.stats["ratio_mean"].item() == pytest.approx((1.0 + math.exp(0.5)) / 2)
    out.loss.backward()
    assert cfm_new.grad[0, 0].item() == 0.0  # clamped: no gradient through the current loss
    # without it (dipod's default, the release's motion-tracking config): log r = 5 for draw 0, capped at 3
    off = fpo_pp_loss(cfm_new, cfm_old, torch.tensor([1.0]), clip=0.5, neg_adv_cfm_clamp=None)
    assert off.stats["log_ratio_mean"].item() == pytest.approx((3.0 + 0.5) / 2)


def test_fpo_pp_objective_reads_cfm_loss_clamp_from_the_config():
    cfm_new, cfm_old, adv = torch.tensor([[25.0]]), torch.tensor([[30.0]]), torch.tensor([1.0])
    fn = get_objective("control", "fpo_pp").fn
    assert make_params("control", "fpo_pp").cfm_loss_clamp is None
    assert fn(cfm_new, cfm_old, adv, make_params("control", "fpo_pp")).stats["log_ratio_mean"].item() == pytest.approx(
        3.0
    )
    clamped = fn(cfm_new, cfm_old, adv, make_params("control", "fpo_pp", cfm_loss_clamp=20.0))
    assert clamped.stats["log_ratio_mean"].item() == 0.0
    with pytest.raises(ValueError):
        make_params("control", "fpo_pp", cfm_loss_clamp=0.0)


def test_ratio_statistics_stay_readable_when_a_ratio_explodes():
    # a fresh head: one completion's ELBO rose by 32 nats, so rho = e^32 ~ 7.9e13 and the raw mean explodes
    log_ratio = torch.tensor([32.0, 0.1, -0.2, 0.0])
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0])
    out = ratio_ppo_loss(log_ratio, torch.zeros(4), adv, clip_low=0.2, clip_high=0.2)
    assert out.stats["ratio_mean"].item() > 1e13 and out.stats["approx_kl"].item() > 1e13
    assert out.stats["log_ratio_mean"].item() == pytest.approx((32.0 + 0.1 - 0.2) / 4)
    assert out.stats["approx_kl_k2"].item() == pytest.approx(0.5 * (32.0**2 + 0.01 + 0.04) / 4)
    # clip(rho) = 1.2, 1.1052, 0.8187, 1.0
    assert out.stats["clipped_ratio_mean"].item() == pytest.approx((1.2 + math.exp(0.1) + math.exp(-0.2) + 1.0) / 4)
    tokens = diffu_grpo_loss(
        log_ratio[None, :], torch.zeros(1, 4), torch.ones(1), torch.tensor([[True, True, True, False]])
    )
    assert tokens.stats["log_ratio_mean"].item() == pytest.approx((32.0 + 0.1 - 0.2) / 3)
    assert tokens.stats["clipped_ratio_mean"].item() == pytest.approx((1.2 + math.exp(0.1) + math.exp(-0.2)) / 3)
