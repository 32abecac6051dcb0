"""Samplers: schedules, block discipline, threshold rule, determinism, temperature, EOS stop."""

from __future__ import annotations

import pytest
import torch

from dipod.language.config import SamplerConfig
from dipod.language.model_tiny import TinyConfig, TinyMaskedLM
from dipod.language.rollout import sample
from dipod.language.sampler import (
    categorical_from_uniform,
    generate,
    gumbel_argmax,
    num_transfer_tokens,
    rows_finished,
    top_k_mask,
)

V = 12
MASK, PAD, EOS = 0, 1, 2  # ids of this test's toy vocabulary (the sampler takes them as arguments)


def test_categorical_from_uniform_inverts_the_tempered_softmax():
    """Stratified uniforms i / N + 1 / 2N hit each token about N * p times (within one), -inf never."""
    logits = torch.tensor([0.3, -torch.inf, 2.0, -1.0, 0.7, 1.1])
    n = 100_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for temperature in (0.5, 1.0):
        tokens = categorical_from_uniform(logits.expand(n, -1), u, temperature=temperature)
        counts = torch.bincount(tokens, minlength=6).double()
        expected = torch.softmax(logits.double() / temperature, -1) * n
        assert (counts - expected).abs().max() <= 1.0
        assert counts[1] == 0


class ToyModel:
    """Input-dependent logits with confident and unsure positions; records every call.

    logits[b, i] = scale * table[i] + 3 * onehot(token before i): a fixed per-position preference
    plus a dependence on the left neighbour, so decoding order matters.
    """

    def __init__(self, length: int, *, scale: float = 4.0, seed: int = 0, eos_bias: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.table = scale * torch.randn(length, V, generator=g)
        self.table[:, MASK] = -1e4  # never propose the mask token
        self.table[:, EOS] += eos_bias
        self.inputs: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.mask_token_id, self.eos_token_id, self.pad_token_id, self.vocab_size = MASK, EOS, PAD, V

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, positions: slice | None = None
    ) -> torch.Tensor:
        n, t = input_ids.shape
        prev = torch.cat([input_ids[:, :1], input_ids[:, :-1]], dim=1)
        logits = self.table[:t][None].expand(n, -1, -1) + 3.0 * torch.nn.functional.one_hot(prev, V)
        self.inputs.append(input_ids.clone())
        self.logits.append(logits.clone())
        return logits if positions is None else logits[:, positions]


def prompts(batch: int = 4, length: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (batch, length), generator=g)
    attn = torch.ones(batch, length, dtype=torch.bool)
    if batch > 1:
        ids[1, :2], attn[1, :2] = PAD, False  # a left-padded row
    return ids, attn


def run(model, prompt_ids, attn=None, **kw):
    args = dict(mask_id=MASK, eos_id=EOS, gen_length=8, block_length=4, steps=4, generator=None)
    args.update(kw)
    return generate(model, prompt_ids, attention_mask=attn, **args)


def states(model: ToyModel, out) -> list[torch.Tensor]:
    """The sequence before every forward pass, then the final one."""
    return [*model.inputs, out.tokens]


# --------------------------------------------------------------------------- building blocks


def test_num_transfer_tokens_is_linear_and_sums_to_the_masked_count():
    masked = torch.tensor([[True] * 10, [True] * 3 + [False] * 7])
    # 10 over 4 steps: 10 // 4 = 2 each, the first 10 % 4 = 2 steps get one more; 3 over 4: 1,1,1,0.
    assert num_transfer_tokens(masked, 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


def test_top_k_mask_matches_per_row_topk():
    scores = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([0, 1, 3, 9, 2, 5])
    chosen = top_k_mask(scores, k)
    for row in range(6):
        expected = torch.zeros(9, dtype=torch.bool)
        expected[scores[row].topk(int(k[row])).indices] = True
        assert torch.equal(chosen[row], expected)


def test_rows_finished_needs_eos_with_everything_before_decoded():
    x = torch.tensor(
        [
            [5, EOS, MASK, MASK],  # finished: EOS at 1, position 0 decoded
            [MASK, EOS, 5, 5],  # not: a masked position before the EOS
            [5, 6, 7, 8],  # not: no EOS
            [5, MASK, 6, EOS],  # not
        ]
    )
    assert rows_finished(x, mask_id=MASK, eos_id=EOS).tolist() == [True, False, False, False]


def test_gumbel_argmax_samples_softmax_at_temperature():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    n = 40_000
    g = torch.Generator().manual_seed(0)
    draws = gumbel_argmax(logits.expand(n, -1), temperature=0.5, generator=g)
    freq = torch.bincount(draws, minlength=4).double() / n
    expected = torch.softmax(logits.double() / 0.5, -1)
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
    assert torch.equal(gumbel_argmax(logits.expand(3, -1), temperature=0.0, generator=None), torch.full((3,), 3))


# --------------------------------------------------------------------------- fixed-schedule remasking


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_schedule_per_step_and_block_and_block_discipline(remasking):
    model = ToyModel(32)
    ids, attn = prompts()
    p = ids.shape[1]
    gen_length, block_length, steps = 12, 4, 9  # 3 blocks, 3 steps each: 4 tokens -> 2, 1, 1
    out = run(
        model,
        ids,
        attn,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        remasking=remasking,
        temperature=0.7,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.nfe == steps
    seq = states(model, out)
    schedule = [2, 1, 1]
    for i in range(steps):
        block, step = divmod(i, 3)
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        before, after = seq[i][:, p:], seq[i + 1][:, p:]
        newly = (before == MASK) & (after != MASK)  # (B, L)
        changed = before != after
        assert torch.equal(changed, newly), "a decoded token changed again"
        assert (newly.sum(-1) == schedule[step]).all()
        assert not changed[:, : lo - p].any() and not changed[:, hi - p :].any(), "changed outside the block"
        assert (after[:, hi - p :] == MASK).all(), "a later block was touched"
        assert torch.equal(seq[i + 1][:, :p], ids), "the prompt changed"
    assert not (out.completion == MASK).any()


def test_low_confidence_unmasks_the_most_confident_proposals():
    model = ToyModel(32)
    ids, _ = prompts()
    p = ids.shape[1]
    out = run(model, ids, gen_length=4, block_length=4, steps=2)  # greedy: 2 tokens per step
    before, after = model.inputs[1][:, p:], out.tokens[:, p:]
    confidence = torch.softmax(model.logits[1][:, p:], -1).max(-1).values  # (B, L) greedy proposal's probability
    newly = (before == MASK) & (after != MASK)
    for row in range(ids.shape[0]):
        masked = (before[row] == MASK).nonzero().squeeze(-1)
        top = masked[confidence[row, masked].topk(2).indices]
        assert set(newly[row].nonzero().squeeze(-1).tolist()) == set(top.tolist())
        assert torch.equal(after[row, top], model.logits[1][row, p + top].argmax(-1))


def test_determinism_given_a_generator_and_greedy_independent_of_it():
    ids, attn = prompts()
    kw = dict(gen_length=8, block_length=4, steps=8, temperature=1.0)
    a = run(ToyModel(32), ids, attn, generator=torch.Generator().manual_seed(3), **kw)
    b = run(ToyModel(32), ids, attn, generator=torch.Generator().manual_seed(3), **kw)
    c = run(ToyModel(32), ids, attn, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe
    assert not torch.equal(a.tokens, c.tokens), "temperature 1 ignored the noise"
    kw["temperature"] = 0.0
    g1 = run(ToyModel(32), ids, attn, generator=torch.Generator().manual_seed(3), **kw)
    g2 = run(ToyModel(32), ids, attn, generator=None, **kw)
    assert torch.equal(g1.tokens, g2.tokens)


def test_greedy_picks_argmax_and_temperature_explores():
    ids, _ = prompts(batch=1)
    model = ToyModel(32, scale=0.3)  # flat distributions: sampling must disagree with argmax sometimes
    greedy = run(model, ids, gen_length=8, block_length=8, steps=8)
    seq = states(model, greedy)
    for i in range(greedy.nfe):  # every decoded token is the argmax given the state it was decoded in
        newly = (seq[i] != seq[i + 1])[0]
        assert newly.sum() == 1
        assert torch.equal(seq[i + 1][0, newly], model.logits[i][0, newly].argmax(-1))
    hot = [
        run(
            ToyModel(32, scale=0.3),
            ids,
            gen_length=8,
            block_length=8,
            steps=8,
            temperature=1.0,
            generator=torch.Generator().manual_seed(s),
        ).completion
        for s in range(6)
    ]
    assert any(not torch.equal(h, greedy.completion) for h in hot)


def test_prompt_with_mask_tokens_and_padding_is_never_changed():
    ids, attn = prompts()
    ids[0, 2] = MASK  # a mask token inside a prompt is not the sampler's to fill
    for remasking, extra in [("low_confidence", {}), ("random", {}), ("threshold", {"threshold": 0.5})]:
        out = run(
            ToyModel(32),
            ids,
            attn,
            remasking=remasking,
            temperature=1.0,
            generator=torch.Generator().manual_seed(0),
            **extra,
        )
        assert torch.equal(out.tokens[:, : ids.shape[1]], ids), remasking


# --------------------------------------------------------------------------- threshold decoding


def test_threshold_unmasks_only_confident_tokens_plus_one_forced():
    model = ToyModel(40, scale=2.0)
    ids, attn = prompts()
    p = ids.shape[1]
    threshold = 0.6
    out = run(model, ids, attn, gen_length=16, block_length=8, remasking="threshold", threshold=threshold)
    seq = states(model, out)
    forced_seen = confident_seen = False
    for i in range(out.nfe):
        before, after = seq[i][:, p:], seq[i + 1][:, p:]
        newly = (before == MASK) & (after != MASK)
        block = (before == MASK).any(0).nonzero().min() // 8  # the current block: the first with masks left
        outside = torch.ones(16, dtype=torch.bool)
        outside[block * 8 : (block + 1) * 8] = False
        confidence = (
            torch.softmax(model.logits[i][:, p:], -1).max(-1).values.masked_fill((before != MASK) | outside, -1.0)
        )
        assert torch.equal(before != after, newly)
        below = newly & (confidence < threshold)
        assert (below.sum(-1) <= 1).all(), "more than one token below the threshold in a step"
        for row in below.any(-1).nonzero().squeeze(-1).tolist():
            assert newly[row].sum() == 1 and confidence[row][newly[row]] == confidence[row].max(), "forced not argmax"
        active = ((before == MASK) & ~outside).any(-1)  # rows with something left in the block make progress
        assert (newly.sum(-1)[active] >= 1).all()
        assert torch.equal(newly[~active], torch.zeros_like(newly[~active]))
        forced_seen |= bool(below.any())
        confident_seen |= bool((newly & (confidence >= threshold)).sum(-1).gt(1).any())
    assert forced_seen and confident_seen, "the toy model should exercise both rules"
    assert not (out.completion == MASK).any()


def test_threshold_nfe_between_blocks_and_length():
    ids, _ = prompts()
    sure = run(ToyModel(32, scale=50.0), ids, remasking="threshold", threshold=0.9)
    assert sure.nfe == 2  # every token certain: one step per block (2 blocks)
    assert (sure.row_nfe == 2).all()
    unsure = run(ToyModel(32, scale=1e-3), ids, remasking="threshold", threshold=0.9)
    assert unsure.nfe == 8  # nothing confident: one forced token per step
    assert (unsure.row_nfe == 8).all()


def test_row_nfe_is_the_nfe_of_decoding_each_row_alone():
    ids, attn = prompts()
    kw = dict(gen_length=16, block_length=8, remasking="threshold", threshold=0.6)
    batched = run(ToyModel(40, scale=2.0), ids, **kw)
    alone = [run(ToyModel(40, scale=2.0), ids[i : i + 1], **kw) for i in range(ids.shape[0])]
    assert batched.row_nfe.tolist() == [a.nfe for a in alone]
    assert batched.nfe == int(batched.row_nfe.max()) > int(batched.row_nfe.min())  # rows differ: a real test
    for i, a in enumerate(alone):
        assert torch.equal(batched.tokens[i], a.tokens[0])
    fixed = run(ToyModel(32), ids, attn, steps=8)
    assert (fixed.row_nfe == fixed.nfe).all()


# --------------------------------------------------------------------------- EOS stop


def test_stop_at_eos_ends_early_and_fills_with_eos():
    ids, attn = prompts()
    eager = ToyModel(32, scale=0.1, eos_bias=30.0)  # EOS is always the confident proposal
    out = run(eager, ids, attn, gen_length=16, block_length=4, steps=16, stop_at_eos=True)
    full = run(ToyModel(32, scale=0.1, eos_bias=30.0), ids, attn, gen_length=16, block_length=4, steps=16)
    assert out.nfe < full.nfe == 16
    assert rows_finished(out.completion, mask_id=MASK, eos_id=EOS).all()
    assert not (out.completion == MASK).any()
    assert (out.completion[:, 4:] == EOS).all()  # later blocks were never decoded: filled with EOS
    never = run(ToyModel(32), ids, attn, stop_at_eos=True)  # no EOS decoded: runs to the end
    assert never.nfe == 4


# --------------------------------------------------------------------------- arguments and config


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"gen_length": 10, "block_length": 4}, "multiple of block_length"),
        ({"steps": 3}, "steps"),
        ({"remasking": "top_p"}, "remasking"),
        ({"temperature": 0.5}, "Generator"),
        ({"remasking": "random"}, "Generator"),
        ({"remasking": "threshold", "threshold": 0.0}, "threshold"),
        ({"stop_at_eos": True, "eos_id": None}, "eos_id"),
        ({"temperature": -1.0, "generator": torch.Generator()}, "temperature"),
    ],
)
def test_bad_arguments_fail_before_any_forward(kw, match):
    model = ToyModel(32)
    ids, _ = prompts()
    with pytest.raises(ValueError, match=match):
        run(model, ids, **kw)
    assert not model.inputs


def test_sample_uses_config_and_model_ids():
    cfg = TinyConfig(vocab_size=V, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS, n_embd=16, n_head=2)
    model = TinyMaskedLM(cfg, generator=torch.Generator().manual_seed(0))
    ids, attn = prompts()
    sampler_cfg = SamplerConfig(gen_length=8, block_length=4, steps=4, temperature=0.5, stop_at_eos=False)
    out = sample(model, ids, sampler_cfg, attention_mask=attn, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (4, 13) and out.nfe == 4 and not (out.completion == MASK).any()
    with pytest.raises(ValueError, match="multiple"):
        SamplerConfig(gen_length=10, block_length=4)
