"""The release's reference term is a negative DiPOD term.

d1/FPO's loss adds ``kl_beta * mean(ELBO_theta - ELBO_ref)`` (``elbo_difference_penalty``, kl_beta = 0.04).
With a reference that carries no gradient this is linear in ELBO_theta, so its gradient is exactly that of
``dipod_term(ELBO_theta, beta=-kl_beta)``: the release's "FPO" is FPO + DiPOD(beta = -0.04), and its
"FPO + DiPOD" (dipod_beta 0.05) is FPO + DiPOD(beta = 0.05 - 0.04 = +0.01). Checked here through the
real masked-token ELBO of a small network, with the release's d1 masking and clip 0.5.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dipod.bounds.masked import draw_masks, masked_token_logprobs
from dipod.objectives import MaskedScores, dipod_term, elbo_difference_penalty, get_objective, make_params
from tests.bounds.tiny_models import MLPMaskedNet

VOCAB, P, L, B, K = 4, 3, 5, 6, 4
MASK_ID = VOCAB


def _setup(seed: int = 0):
    """Policy network, a reference network (other weights), a batch with d1 draws, and old scores taken
    before one perturbation of the policy, so that rho != 1 and some ratios clip at 0.5."""
    g = torch.Generator().manual_seed(seed)
    net = MLPMaskedNet(VOCAB, P + L, seed=seed)
    reference = MLPMaskedNet(VOCAB, P + L, seed=seed + 1)
    prompt = torch.randint(0, VOCAB, (B, P), generator=g)
    completion = torch.randint(0, VOCAB, (B, L), generator=g)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, 3:] = False  # one shorter completion
    draws = draw_masks(valid, K, generator=g, scheme="d1")
    old_net = copy.deepcopy(net)
    with torch.no_grad():
        for p in old_net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        old = masked_token_logprobs(old_net, prompt, completion, draws, mask_id=MASK_ID)
    adv = torch.randn(B, generator=g, dtype=torch.float32)
    return net, reference, (prompt, completion, valid, draws, old, adv)


def _scores(model, batch) -> MaskedScores:
    prompt, completion, valid, draws, _, _ = batch
    return MaskedScores(masked_token_logprobs(model, prompt, completion, draws, mask_id=MASK_ID), draws, valid)


def _grads(loss: torch.Tensor, net: torch.nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(net.parameters()), retain_graph=True))


def _assert_same_grads(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert any(x.abs().max() > 1e-4 for x in a)  # a real gradient, not two zeros
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_reference_term_is_dipod_with_negative_beta():
    net, reference, batch = _setup()
    elbo = _scores(net, batch).elbo("sum")  # (B,) with gradient
    with torch.no_grad():
        ref_elbo = _scores(reference, batch).elbo("sum")  # the reference has no gradient
    penalty = elbo_difference_penalty(elbo, ref_elbo, 0.04)
    negative = dipod_term(elbo, -0.04)
    _assert_same_grads(_grads(penalty.loss, net), _grads(negative.loss, net))
    # the values differ only by the constant -0.04 * mean(ref_elbo)
    assert penalty.loss.item() == pytest.approx(negative.loss.item() - 0.04 * ref_elbo.mean().item(), rel=1e-5)


def test_reference_sharing_the_policy_weights_is_detached():
    """A reference scored by the policy's own network (LoRA's disabled adapter shares the base weights):
    the penalty detaches it, so the equivalence still holds and the gradient is not zero."""
    net, _, batch = _setup(1)
    elbo = _scores(net, batch).elbo("sum")
    ref_elbo = _scores(net, batch).elbo("sum")  # built with gradient on purpose
    _assert_same_grads(
        _grads(elbo_difference_penalty(elbo, ref_elbo, 0.04).loss, net), _grads(dipod_term(elbo, -0.04).loss, net)
    )


@pytest.mark.parametrize(("dipod_beta", "effective"), [(0.05, 0.01), (0.0, -0.04), (0.09, 0.05)])
def test_release_fpo_plus_reference_term_is_fpo_plus_shifted_dipod(dipod_beta: float, effective: float):
    """FPO + kl 0.04 + DiPOD(dipod_beta) has the gradient of FPO + DiPOD(dipod_beta - 0.04)."""
    net, reference, batch = _setup(2)
    cfg = make_params("language", "fpo", clip_low=0.5, clip_high=0.5, elbo_scale="sum", kl_beta=0.04)
    fpo = get_objective("language", "fpo")
    _, _, valid, draws, old_logp, adv = batch
    new = _scores(net, batch)
    out = fpo.fn(new, MaskedScores(old_logp, draws, valid), adv, cfg)
    assert 0 < out.stats["clip_frac"].item() < 1  # ratios away from 1, some clipped: not the trivial rho = 1
    with torch.no_grad():
        ref_elbo = _scores(reference, batch).elbo("sum")
    release = out + dipod_term(out.elbo, dipod_beta) + elbo_difference_penalty(out.elbo, ref_elbo, 0.04)
    shifted = out.loss + (0.0 if effective == 0 else dipod_term(out.elbo, effective).loss)
    _assert_same_grads(_grads(release.loss, net), _grads(shifted, net))
