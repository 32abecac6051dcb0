"""Masked-diffusion bounds against exact likelihoods of models small enough to enumerate."""

import itertools
import math

import pytest
import torch

from dipod.bounds.masked import (
    BERNOULLI_MIN_T,
    MaskDraws,
    all_orders,
    any_order_loglik,
    completion_valid_mask,
    draw_block_random_masks,
    draw_masks,
    draw_one_step_masks,
    elbo_from_logprobs,
    eubo_from_logprobs,
    exact_loglik,
    masked_elbo,
    masked_inputs,
    masked_token_logprobs,
    order_elbo,
    order_iw_loglik,
    random_orders,
)
from tests.bounds.tiny_models import JointMaskedNet, MLPMaskedNet, all_subset_draws

V, P, L, B = 3, 2, 3, 4
MASK_ID = V


def _data(seed=0, batch=B, length=L):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, V, (batch, P), generator=g)
    completion = torch.randint(0, V, (batch, length), generator=g)
    return prompt, completion


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- draws


def test_completion_valid_mask_stops_after_first_eos():
    eos, pad = 9, 8
    ids = torch.tensor([[1, 2, eos, eos, 3], [1, 1, 1, 1, 1], [eos, 4, 4, pad, pad], [1, 2, 3, pad, pad]])
    valid = completion_valid_mask(ids, eos, pad)
    assert valid.tolist() == [
        [True, True, True, False, False],
        [True] * 5,
        [True, False, False, False, False],
        [True, True, True, False, False],
    ]
    assert completion_valid_mask(ids, eos, pad, include_eos=False)[0].tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("scheme", ["count", "round", "d1", "bernoulli"])
def test_draws_respect_valid_positions_and_are_deterministic(scheme):
    valid = torch.tensor([[True] * 6, [True, True, True, False, False, False], [False] * 6])
    a = draw_masks(valid, 8, generator=_gen(3), scheme=scheme)
    b = draw_masks(valid, 8, generator=_gen(3), scheme=scheme)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
    assert not (a.mask & ~valid[:, None]).any()
    assert (a.weight[2] == 0).all()  # nothing to score in an empty completion
    assert a.prompt_mask is None  # the prompt is never masked unless asked


def test_count_scheme_masks_exactly_n_with_weight_length_over_n():
    valid = torch.tensor([[True] * 5 + [False] * 3]).expand(64, -1)
    draws = draw_masks(valid, 16, generator=_gen(1), scheme="count")
    n = draws.mask.sum(-1)  # (B, K)
    assert n.min() >= 1 and n.max() <= 5
    torch.testing.assert_close(draws.weight, 5.0 / n.float())
    # n is uniform on {1..5}: every count appears with frequency near 1/5
    freq = torch.bincount(n.flatten(), minlength=6)[1:].float() / n.numel()
    assert (freq - 0.2).abs().max() < 0.03


def test_stratified_levels_cover_each_stratum_once():
    valid = torch.ones(32, 10, dtype=torch.bool)
    draws = draw_masks(valid, 4, generator=_gen(0), scheme="bernoulli", stratified=True)
    u = (1 - draws.t) / (1 - BERNOULLI_MIN_T)  # undo the floor t = eps + (1 - eps) * (1 - u)
    strata = torch.floor(u * 4).long().sort(-1).values  # (B, K): one level per quarter
    assert torch.equal(strata, torch.arange(4).expand(32, -1))


def test_prompt_masking_only_when_asked_and_only_valid_prompt_tokens():
    valid = torch.ones(50, 4, dtype=torch.bool)
    prompt_valid = torch.tensor([[False, True, True, True, True]]).expand(50, -1)
    draws = draw_masks(valid, 3, generator=_gen(0), prompt_valid=prompt_valid, prompt_mask_prob=0.5)
    assert not draws.prompt_mask[:, :, 0].any()
    assert 0.4 < draws.prompt_mask[:, :, 1:].float().mean() < 0.6


def test_one_step_masks_cover_the_whole_completion():
    valid = torch.tensor([[True, True, False]]).expand(40, -1)
    prompt_valid = torch.ones(40, 5, dtype=torch.bool)
    draws = draw_one_step_masks(valid, 2, generator=_gen(0), prompt_valid=prompt_valid, prompt_mask_prob=0.15)
    assert draws.mask.all() and (draws.weight == 1).all()
    assert 0.08 < draws.prompt_mask.float().mean() < 0.22
    assert draw_one_step_masks(valid, 2, generator=_gen(0)).prompt_mask is None


def test_block_random_masks_later_blocks_fully_and_part_of_the_chosen_block():
    valid = torch.ones(200, 12, dtype=torch.bool)
    draws = draw_block_random_masks(valid, 2, generator=_gen(0), block_length=4)
    mask = draws.mask.view(200, 2, 3, 4)  # (B, K, blocks, block_length)
    per_block = mask.sum(-1)  # (B, K, 3)
    for b in range(3):
        # the first partly-masked block is followed only by fully masked blocks
        partial = (per_block[..., b] > 0) & (per_block[..., :b] == 0).all(-1)
        assert (per_block[..., b + 1 :][partial] == 4).all()
    assert (per_block.sum(-1) >= 1).all()
    torch.testing.assert_close(draws.weight, 12.0 / draws.mask.sum(-1).float())


def test_block_random_masks_the_filler_after_eos_without_scoring_it():
    eos = 2
    completion = torch.tensor([[1, 0, 1, 1, 0, eos, eos, eos, eos, eos], [0, 1, 0, 1, 1, 0, 1, 0, 1, 1]])
    valid = completion_valid_mask(completion, eos)  # row 0: 6 valid (first EOS included), row 1: all 10
    draws = draw_block_random_masks(valid, 64, generator=_gen(0), block_length=4)
    assert draws.mask[0, :, 6:].all()  # filler after the first EOS: always masked (SPG)
    scored = draws.mask & valid[:, None]
    lengths = valid.sum(-1, keepdim=True).float()
    torch.testing.assert_close(draws.weight, lengths / scored.sum(-1).float())  # the filler is not counted
    torch.testing.assert_close(draws.t, scored.sum(-1).float() / lengths)
    assert not draws.mask[0, :, :6].all(-1).all()  # ... while valid positions are masked only sometimes
    noisy = masked_inputs(torch.zeros(2, 1, dtype=torch.long), completion, draws, mask_id=MASK_ID)
    assert (noisy[0, :, 1 + 6 :] == MASK_ID).all()  # the model sees mask tokens there
    token_logp = torch.randn(2, 64, 10, generator=_gen(1))
    poisoned = token_logp.masked_fill(~valid[:, None], float("nan"))  # the filler never enters the bounds
    for bound in (elbo_from_logprobs, eubo_from_logprobs):
        torch.testing.assert_close(bound(poisoned, draws, valid), bound(token_logp, draws, valid))
        assert torch.isfinite(bound(poisoned, draws, valid)).all()


# ----------------------------------------------------------------------------- ELBO


def test_all_draws_share_one_forward_pass():
    net = MLPMaskedNet(V, P + L)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    prompt, completion = _data()
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, 8, generator=_gen(0))
    masked_elbo(net, prompt, completion, valid, draws, mask_id=MASK_ID)
    assert len(calls) == 1


def test_enumerated_subset_elbo_equals_order_average():
    # E_{n,S}[(L/n) sum_{i in S} log p] is the mean over orders of the any-order AR log-likelihood.
    net = MLPMaskedNet(V, P + L)
    prompt, completion = _data()
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = all_subset_draws(B, L)
    elbo = masked_elbo(net, prompt, completion, valid, draws, mask_id=MASK_ID)
    orders = all_orders(L, B)
    by_orders = order_elbo(any_order_loglik(net, prompt, completion, valid, orders, mask_id=MASK_ID))
    torch.testing.assert_close(elbo, by_orders, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme", ["count", "round"])
def test_monte_carlo_elbo_is_unbiased(scheme):
    net = MLPMaskedNet(V, P + L)
    prompt, completion = _data(batch=2)
    valid = torch.ones_like(completion, dtype=torch.bool)
    exact = order_elbo(any_order_loglik(net, prompt, completion, valid, all_orders(L, 2), mask_id=MASK_ID))
    k = 4000
    draws = draw_masks(valid, k, generator=_gen(7), scheme=scheme, stratified=False)
    with torch.no_grad():
        token_logp = masked_token_logprobs(net, prompt, completion, draws, mask_id=MASK_ID)
    per_draw = (token_logp * draws.mask).sum(-1) * draws.weight  # (B, K) single-draw estimates
    mean, se = per_draw.mean(-1), per_draw.std(-1) / math.sqrt(k)
    assert ((mean - exact).abs() < 3 * se).all(), (mean, exact, se)
    torch.testing.assert_close(elbo_from_logprobs(token_logp, draws, valid), mean)


def _floored_bernoulli_draws(batch: int, length: int, eps: float) -> MaskDraws:
    """Every subset S with weight K * E_t[t^(|S|-1) (1-t)^(L-|S|)], t ~ U(eps, 1]: the draw average is the
    exact expectation of the floored bernoulli estimate (1/t) * sum_{i in S} log p, S ~ Bernoulli(t)."""

    def integral(n: int, a: float) -> float:  # int_a^1 t^(n-1) (1-t)^(L-n) dt, by expanding (1-t)^(L-n)
        m = length - n
        return sum(math.comb(m, j) * (-1) ** j * (1 - a ** (n + j)) / (n + j) for j in range(m + 1))

    subsets = [s for n in range(1, length + 1) for s in itertools.combinations(range(length), n)]
    mask = torch.zeros(len(subsets), length, dtype=torch.bool)
    weight = torch.zeros(len(subsets), dtype=torch.float64)
    for j, subset in enumerate(subsets):
        mask[j, list(subset)] = True
        weight[j] = len(subsets) * integral(len(subset), eps) / (1 - eps)
    ones = torch.ones(batch, len(subsets))
    return MaskDraws(mask=mask[None].expand(batch, -1, -1), weight=weight[None].expand(batch, -1), t=ones)


def test_bernoulli_noise_level_is_floored_so_weights_stay_bounded():
    valid = torch.ones(256, 8, dtype=torch.bool)
    draws = draw_masks(valid, 200, generator=_gen(5), scheme="bernoulli", stratified=False)
    # without the floor, 51,200 uniform levels would put some below 1e-3 (probability 1 - e^-51)
    assert draws.t.min() >= BERNOULLI_MIN_T and draws.t.max() <= 1.0
    assert draws.weight.max() <= 1.0 / BERNOULLI_MIN_T
    torch.testing.assert_close(draws.weight, 1.0 / draws.t)  # the weight is 1/t of the t actually used
    assert draws.t.min() < 2 * BERNOULLI_MIN_T  # the floor is a floor, not a shift of the whole range


def test_floored_bernoulli_elbo_is_unbiased_for_its_enumerated_expectation():
    net = MLPMaskedNet(V, P + L).double()
    prompt, completion = _data(batch=2)
    valid = torch.ones_like(completion, dtype=torch.bool)
    with torch.no_grad():
        enumerated = _floored_bernoulli_draws(2, L, BERNOULLI_MIN_T)
        expected = masked_elbo(net, prompt, completion, valid, enumerated, mask_id=MASK_ID)  # exact E[estimate]
        exact = order_elbo(any_order_loglik(net, prompt, completion, valid, all_orders(L, 2), mask_id=MASK_ID))
        no_floor = masked_elbo(net, prompt, completion, valid, _floored_bernoulli_draws(2, L, 0.0), mask_id=MASK_ID)
        k = 4000
        draws = draw_masks(valid, k, generator=_gen(7), scheme="bernoulli", stratified=False)
        token_logp = masked_token_logprobs(net, prompt, completion, draws, mask_id=MASK_ID)
    torch.testing.assert_close(no_floor, exact, atol=1e-9, rtol=0)  # eps = 0: the enumeration is the ELBO
    per_draw = (token_logp * draws.mask).sum(-1) * draws.weight  # (B, K) single-draw estimates
    mean, se = per_draw.mean(-1), per_draw.std(-1) / math.sqrt(k)
    assert ((mean - expected).abs() < 3 * se).all(), (mean, expected, se)
    # the floor's bias against the full ELBO is of order eps, far below the Monte-Carlo error
    assert ((expected - exact).abs() <= 2 * BERNOULLI_MIN_T * exact.abs()).all(), (expected, exact)


def test_d1_scheme_is_biased_towards_zero():
    # floor(t * L) never masks the whole completion and wastes n = 0 draws: the release's bias, kept on purpose.
    net = MLPMaskedNet(V, P + L)
    prompt, completion = _data(batch=2)
    valid = torch.ones_like(completion, dtype=torch.bool)
    exact = order_elbo(any_order_loglik(net, prompt, completion, valid, all_orders(L, 2), mask_id=MASK_ID))
    draws = draw_masks(valid, 4000, generator=_gen(7), scheme="d1")
    with torch.no_grad():
        d1 = masked_elbo(net, prompt, completion, valid, draws, mask_id=MASK_ID)
    assert (d1 > exact + 0.05).all()


def test_elbo_is_below_exact_loglik():
    for seed in range(3):
        net = MLPMaskedNet(V, P + L, seed=seed)
        prompt, completion = _data(seed)
        valid = torch.ones_like(completion, dtype=torch.bool)
        with torch.no_grad():
            elbo = masked_elbo(net, prompt, completion, valid, all_subset_draws(B, L), mask_id=MASK_ID)
            exact = exact_loglik(net, prompt, completion, mask_id=MASK_ID)
        assert (elbo < exact - 1e-4).all()


def test_context_free_model_has_a_tight_elbo():
    net = MLPMaskedNet(V, P + L, context_free=True)
    prompt, completion = _data()
    valid = torch.ones_like(completion, dtype=torch.bool)
    with torch.no_grad():
        elbo = masked_elbo(net, prompt, completion, valid, all_subset_draws(B, L), mask_id=MASK_ID)
        exact = exact_loglik(net, prompt, completion, mask_id=MASK_ID)
    torch.testing.assert_close(elbo, exact, atol=1e-6, rtol=0)
    direct = torch.log_softmax(net.table, -1)[P:].gather(-1, completion.T).sum(0)  # sum_i log p(x_i)
    torch.testing.assert_close(exact, direct, atol=1e-6, rtol=0)


def test_exact_loglik_of_consistent_conditionals_is_the_joint():
    net = JointMaskedNet(V, L, P)
    prompt, completion = _data()
    torch.testing.assert_close(exact_loglik(net, prompt, completion, mask_id=MASK_ID), net.log_q_of(completion))
    # and it normalises: pi sums to 1 over all V^L completions
    every = net.states
    logpi = exact_loglik(net, prompt[:1].expand(len(every), -1), every, mask_id=MASK_ID)
    torch.testing.assert_close(logpi.exp().sum(), torch.tensor(1.0))


def test_mlp_model_likelihood_normalises():
    net = MLPMaskedNet(V, P + L)
    import itertools

    every = torch.tensor(list(itertools.product(range(V), repeat=L)))
    prompt = torch.zeros(len(every), P, dtype=torch.long)
    with torch.no_grad():
        logpi = exact_loglik(net, prompt, every, mask_id=MASK_ID)
    torch.testing.assert_close(logpi.exp().sum(), torch.tensor(1.0))


def test_importance_weighted_bound_tightens_with_more_orders():
    net = MLPMaskedNet(V, P + L, seed=1)
    prompt, completion = _data(1, batch=1)
    valid = torch.ones_like(completion, dtype=torch.bool)
    with torch.no_grad():
        exact = exact_loglik(net, prompt, completion, mask_id=MASK_ID)
        reps = 3000
        means = []
        for k in (1, 2, 4):
            orders = random_orders(valid.expand(reps, -1), k, generator=_gen(k))  # (reps, K, L)
            ll = any_order_loglik(
                net,
                prompt.expand(reps, -1),
                completion.expand(reps, -1),
                valid.expand(reps, -1),
                orders,
                mask_id=MASK_ID,
            )
            means.append(order_iw_loglik(ll).mean())
    assert means[0] < means[1] < means[2] < exact.squeeze()
    every = any_order_loglik(net, prompt, completion, valid, all_orders(L), mask_id=MASK_ID)
    torch.testing.assert_close(order_iw_loglik(every), exact)


@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_eubo_sits_above_the_exact_loglik_for_consistent_conditionals(beta):
    # SPG: with exact expectations, sum_i (1/beta) log E[w p_i^beta 1[i masked]] >= log pi >= ELBO.
    net = JointMaskedNet(V, L, P, seed=2)
    prompt, completion = _data(2)
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = all_subset_draws(B, L)
    token_logp = masked_token_logprobs(net, prompt, completion, draws, mask_id=MASK_ID)
    eubo = eubo_from_logprobs(token_logp, draws, valid, beta=beta, scale="sum")
    elbo = elbo_from_logprobs(token_logp, draws, valid)
    exact = net.log_q_of(completion)
    assert (eubo >= exact - 1e-5).all() and (elbo <= exact + 1e-5).all()
    assert (eubo - elbo > 1e-3).all()
    per_token = eubo_from_logprobs(token_logp, draws, valid, beta=beta, scale="mean")
    torch.testing.assert_close(per_token * L, eubo)


def test_eubo_matches_a_hand_computation():
    # one token, two draws: masked in draw 0 with weight 2 (p = 0.5), unmasked in draw 1.
    from dipod.bounds.masked import MaskDraws

    draws = MaskDraws(mask=torch.tensor([[[True], [False]]]), weight=torch.tensor([[2.0, 1.0]]), t=torch.ones(1, 2))
    token_logp = torch.log(torch.tensor([[[0.5], [0.9]]]))
    eubo = eubo_from_logprobs(token_logp, draws, torch.ones(1, 1, dtype=torch.bool), beta=2.0)
    # q = mean_k(p^2 * w * mask) = (0.25 * 2 + 0) / 2 = 0.25; eubo = log(0.25) / 2
    torch.testing.assert_close(eubo, torch.tensor([math.log(0.25) / 2]))


def test_elbo_mean_scale_divides_by_valid_length_and_ignores_padding():
    net = MLPMaskedNet(V, P + L)
    prompt, completion = _data()
    valid = torch.tensor([[True, True, True], [True, True, False], [True, False, False], [True, True, True]])
    draws = draw_masks(valid, 6, generator=_gen(0))
    token_logp = masked_token_logprobs(net, prompt, completion, draws, mask_id=MASK_ID)
    s = elbo_from_logprobs(token_logp, draws, valid, scale="sum")
    m = elbo_from_logprobs(token_logp, draws, valid, scale="mean")
    torch.testing.assert_close(m, s / valid.sum(-1))
    poisoned = token_logp.masked_fill(~valid[:, None], float("nan"))  # padding never enters the bound
    torch.testing.assert_close(elbo_from_logprobs(poisoned, draws, valid), s)


def test_elbo_gradient_matches_finite_differences():
    net = MLPMaskedNet(V, P + L).double()
    prompt, completion = _data()
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, 4, generator=_gen(0))

    def f():
        return masked_elbo(lambda ids, a: net(ids, a), prompt, completion, valid, draws, mask_id=MASK_ID).sum()

    f().backward()
    grad = net.out.grad[0, 0].item()
    h = 1e-6
    with torch.no_grad():
        net.out[0, 0] += h
        up = f().item()
        net.out[0, 0] -= 2 * h
        down = f().item()
    assert grad == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


def _chosen_blocks(draws, block_length: int, valid_length: int) -> torch.Tensor:
    """(B, K) the block each draw picked: the first block with a masked valid position."""
    scored = draws.mask[..., :valid_length]  # (B, K, Lv)
    first = scored.float().argmax(-1)  # first masked valid position
    return first // block_length


def test_block_random_permutation_choice_is_the_releases_non_uniform_scheme():
    # 8 blocks of 4 in L = 32, 3 of them valid (10 valid tokens): randperm(8) % 3 picks blocks 0, 1, 2
    # with probability 3/8, 3/8, 2/8, and two draws of a sequence coincide less often than independent ones.
    valid = torch.zeros(4000, 32, dtype=torch.bool)
    valid[:, :10] = True
    draws = draw_block_random_masks(valid, 3, generator=_gen(0), block_length=4)
    blocks = _chosen_blocks(draws, 4, 10)
    freq = torch.bincount(blocks[:, 0], minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([3 / 8, 3 / 8, 2 / 8]), atol=0.025, rtol=0)
    # randperm(8) % 3, first two entries: distinct residues unless both come from {0,3,6} (p = 3/8 * 2/7) ...
    same01 = (blocks[:, 0] == blocks[:, 1]).float().mean().item()
    # P(equal residues) = sum_r c_r (c_r - 1) / (8 * 7) with class sizes 3, 3, 2: (6 + 6 + 2) / 56 = 0.25
    assert abs(same01 - 0.25) < 0.025
    uniform = draw_block_random_masks(valid, 3, generator=_gen(0), block_length=4, block_choice="uniform")
    ublocks = _chosen_blocks(uniform, 4, 10)
    ufreq = torch.bincount(ublocks[:, 0], minlength=3).float() / 4000
    torch.testing.assert_close(ufreq, torch.full((3,), 1 / 3), atol=0.025, rtol=0)
    assert abs((ublocks[:, 0] == ublocks[:, 1]).float().mean().item() - 1 / 3) < 0.025


def test_block_random_permutation_never_repeats_within_the_blocks_and_continues_past_them():
    valid = torch.ones(500, 12, dtype=torch.bool)  # 3 blocks of 4, all valid
    draws = draw_block_random_masks(valid, 3, generator=_gen(1), block_length=4)
    blocks = _chosen_blocks(draws, 4, 12)
    assert (blocks.sort(-1).values == torch.arange(3)).all()  # every draw a different block: a permutation
    more = draw_block_random_masks(valid, 7, generator=_gen(1), block_length=4)  # K > n: fresh permutations
    blocks = _chosen_blocks(more, 4, 12)
    assert (blocks[:, :3].sort(-1).values == torch.arange(3)).all()
    assert (blocks[:, 3:6].sort(-1).values == torch.arange(3)).all()
    with pytest.raises(ValueError, match="block_choice"):
        draw_block_random_masks(valid, 2, generator=_gen(1), block_length=4, block_choice="random")
