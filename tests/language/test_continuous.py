"""Continuous batching (generate_continuous), per-row noise streams and the KV cache of block-wise decoding."""

from __future__ import annotations

import pytest
import torch

from dipod.language.config import SamplerConfig
from dipod.language.continuous import generate_continuous
from dipod.language.model_tiny import TinyConfig, TinyMaskedLM
from dipod.language.models import KVCacheLM, build_model, build_tokenizer
from dipod.language.rollout import _greedy_remasking, decode_and_score, encode_prompts, sample
from dipod.language.sampler import counter_uniform, generate
from dipod.language.tasks import get_task
from tests.language.language_helpers import tiny_config
from tests.language.test_sampler import EOS, MASK, PAD, ToyModel, V, prompts

CASES = [
    # (remasking, temperature, extra arguments)
    ("threshold", 0.0, {"threshold": 0.6}),
    ("threshold", 1.0, {"threshold": 0.6}),
    ("low_confidence", 0.7, {"steps": 8}),
    ("random", 0.0, {"steps": 16}),
]


def queue(n: int = 7, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    ids, attn = prompts(batch=n, length=length, seed=5)
    return ids, attn


def continuous(model, ids, attn=None, **kw):
    args = dict(mask_id=MASK, eos_id=EOS, gen_length=16, block_length=8, slots=3, generator=None)
    args.update(kw)
    return generate_continuous(model, ids, attention_mask=attn, **args)


def tiny(n_layer: int = 2, seed: int = 0, *, sharpness: float = 1.0) -> TinyMaskedLM:
    """A fresh tiny model; ``sharpness`` scales its output head, so that its confidences spread out."""
    cfg = TinyConfig(vocab_size=V, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS, n_embd=32, n_head=2)
    cfg.n_layer = n_layer
    model = TinyMaskedLM(cfg, generator=torch.Generator().manual_seed(seed)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


# --------------------------------------------------------------------------- per-row noise


def test_counter_uniform_is_splitmix64_and_row_independent():
    def splitmix64(z: int) -> int:  # the reference, in Python's unbounded ints
        m = (1 << 64) - 1
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    seeds = torch.tensor([12345, 2**62 - 1, 7])
    counters = torch.tensor([[0, 1, 99], [5, 1 << 40, 3], [2, 2, 2]])
    u = counter_uniform(seeds, counters)  # (3, 3)
    for r, c in [(0, 0), (1, 1), (2, 2), (0, 2)]:
        z = splitmix64((int(seeds[r]) + int(counters[r, c]) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1))
        assert u[r, c].item() == ((z >> 11) + 0.5) * 2.0**-53
    # A row's draws do not depend on the other rows of the batch.
    assert torch.equal(counter_uniform(seeds[1:2], counters[1:2]), u[1:2])
    # Uniform on (0, 1): mean 1/2, variance 1/12, over many counters of one seed.
    many = counter_uniform(torch.tensor([3]), torch.arange(200_000)[None, :])
    assert many.min() > 0 and many.max() < 1
    assert abs(many.mean().item() - 0.5) < 0.005 and abs(many.var().item() - 1 / 12) < 0.002


# --------------------------------------------------------------------------- continuous batching


@pytest.mark.parametrize(("remasking", "temperature", "extra"), CASES)
@pytest.mark.parametrize("stop_at_eos", [False, True])
def test_each_row_decodes_as_if_alone(remasking, temperature, extra, stop_at_eos):
    ids, attn = queue()
    seeds = torch.randint(0, 2**62, (len(ids),), generator=torch.Generator().manual_seed(0))
    kw = dict(remasking=remasking, temperature=temperature, stop_at_eos=stop_at_eos, row_seeds=seeds, **extra)
    eos_bias = 2.0 if stop_at_eos else 0.0  # EOS now and then: rows finish at different steps
    batched = continuous(ToyModel(40, scale=2.0, eos_bias=eos_bias), ids, attn, **kw)
    for slots in (1, 2, 7, 20):
        other = continuous(ToyModel(40, scale=2.0, eos_bias=eos_bias), ids, attn, **{**kw, "slots": slots})
        assert torch.equal(other.tokens, batched.tokens), f"slots = {slots} changed the tokens"
        assert torch.equal(other.row_nfe, batched.row_nfe)
    for i in range(len(ids)):
        alone = continuous(
            ToyModel(40, scale=2.0, eos_bias=eos_bias),
            ids[i : i + 1],
            attn[i : i + 1],
            **{**kw, "row_seeds": seeds[i : i + 1]},
        )
        assert torch.equal(alone.tokens[0], batched.tokens[i]), f"row {i} depends on its neighbours"
        assert alone.nfe == batched.row_nfe[i]
    assert not (batched.completion == MASK).any()
    if remasking == "threshold" or stop_at_eos:
        assert batched.row_nfe.min() < batched.row_nfe.max(), "rows should need different NFE: a real test"


def test_reversed_queue_gives_the_same_rows_and_reseeding_is_deterministic():
    ids, attn = queue()
    kw = dict(remasking="threshold", threshold=0.6, temperature=1.0)
    a = continuous(ToyModel(40, scale=2.0), ids, attn, generator=torch.Generator().manual_seed(3), **kw)
    b = continuous(ToyModel(40, scale=2.0), ids, attn, generator=torch.Generator().manual_seed(3), **kw)
    c = continuous(ToyModel(40, scale=2.0), ids, attn, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe and torch.equal(a.row_nfe, b.row_nfe)
    assert not torch.equal(a.tokens, c.tokens), "temperature 1 ignored the noise"
    seeds = torch.arange(len(ids)) * 1000 + 17
    fwd = continuous(ToyModel(40, scale=2.0), ids, attn, row_seeds=seeds, **kw)
    rev = continuous(ToyModel(40, scale=2.0), ids.flip(0), attn.flip(0), row_seeds=seeds.flip(0), **kw)
    assert torch.equal(fwd.tokens, rev.tokens.flip(0)) and torch.equal(fwd.row_nfe, rev.row_nfe.flip(0))


@pytest.mark.parametrize(("remasking", "extra"), [("threshold", {"threshold": 0.6}), ("low_confidence", {"steps": 8})])
def test_greedy_equals_generate(remasking, extra):
    ids, attn = queue()
    kw = dict(gen_length=16, block_length=8, remasking=remasking, **extra)
    reference = generate(
        ToyModel(40, scale=2.0), ids, attention_mask=attn, mask_id=MASK, eos_id=EOS, generator=None, **kw
    )
    out = continuous(ToyModel(40, scale=2.0), ids, attn, slots=3, **kw)
    assert torch.equal(out.tokens, reference.tokens)
    assert torch.equal(out.row_nfe, reference.row_nfe)


def test_slots_are_refilled_and_every_forward_row_is_live():
    ids, attn = queue(n=9)
    model = ToyModel(40, scale=2.0)
    slots = 4
    out = continuous(model, ids, attn, slots=slots, remasking="threshold", threshold=0.6)
    sizes = [x.shape[0] for x in model.inputs]  # rows of each forward pass
    assert out.nfe == len(sizes)
    assert max(sizes) == slots and sizes[0] == slots
    # Each forward pass holds live rows only: every row is counted in exactly one row of each of its passes.
    assert sum(sizes) == int(out.row_nfe.sum())
    # The batch stays full while prompts wait, then shrinks.
    assert sizes == sorted(sizes, reverse=True)
    first_short = next(i for i, s in enumerate(sizes) if s < slots)
    assert int(out.row_nfe.sum()) - sum(sizes[:first_short]) <= slots * int(out.row_nfe.max())
    # Batched NFE below a fixed batch of `slots` rows decoded until its slowest row is done.
    fixed = sum(int(out.row_nfe[i : i + slots].max()) for i in range(0, len(ids), slots))
    assert out.nfe < fixed


def test_rows_in_different_blocks_get_their_own_block():
    ids, attn = queue(n=5)
    model = ToyModel(40, scale=2.0)
    out = continuous(model, ids, attn, gen_length=24, block_length=4, slots=2, remasking="threshold", threshold=0.6)
    p = ids.shape[1]
    moved = False
    for i, (before, after) in enumerate(zip(model.inputs, [*model.inputs[1:], None], strict=True)):
        if after is None or before.shape != after.shape:
            continue
        same_row = (before[:, :p] == after[:, :p]).all(-1) & ~((before[:, p:] != MASK) & (after[:, p:] == MASK)).any(-1)
        changed = (before != after)[:, p:] & same_row[:, None]  # (n, L), slots refilled with a new prompt skipped
        first_masked = (before[:, p:] == MASK).long().argmax(-1)  # (n,) the row's block starts at its first mask
        block_start = first_masked // 4 * 4
        positions = torch.arange(24)[None, :]
        inside = (positions >= block_start[:, None]) & (positions < block_start[:, None] + 4)
        moved |= bool((block_start != block_start[0]).any())
        assert not (changed & ~inside).any(), f"step {i} changed a token outside a row's block"
    assert moved, "rows should be at different blocks at some step: a real test"
    assert not (out.completion == MASK).any()


def test_tiny_model_rows_decode_as_if_alone():
    model = tiny()
    ids, attn = queue(n=6)
    kw = dict(gen_length=16, block_length=4, remasking="threshold", threshold=0.3, temperature=0.8)
    seeds = torch.arange(6) + 100
    out = continuous(model, ids, attn, slots=4, row_seeds=seeds, **kw)
    for i in range(6):
        alone = continuous(model, ids[i : i + 1], attn[i : i + 1], slots=1, row_seeds=seeds[i : i + 1], **kw)
        assert torch.equal(alone.tokens[0], out.tokens[i])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"slots": 0}, "slots"),
        ({"slots": 2.0}, "slots"),
        ({"row_seeds": torch.zeros(3, dtype=torch.long)}, "row_seeds"),
        ({"kv_cache": "full"}, "kv_cache"),
        ({"temperature": 0.5}, "Generator"),
        ({"remasking": "threshold", "threshold": None}, "threshold"),
    ],
)
def test_bad_arguments_fail_before_any_forward(kw, match):
    model = ToyModel(40)
    ids, attn = queue()
    kw = {"remasking": "threshold", "threshold": 0.5, **kw}
    with pytest.raises(ValueError, match=match):
        continuous(model, ids, attn, **kw)
    assert not model.inputs


def test_sample_uses_continuous_batching_when_slots_are_set():
    model = tiny()
    ids, attn = queue(n=5)
    cfg = SamplerConfig(gen_length=8, block_length=4, remasking="threshold", threshold=0.3, stop_at_eos=False)
    together = sample(model, ids, cfg, attention_mask=attn, generator=None)
    slotted = sample(model, ids, cfg.model_copy(update={"slots": 2}), attention_mask=attn, generator=None)
    assert torch.equal(together.tokens, slotted.tokens)  # greedy: the same decisions per row
    assert torch.equal(together.row_nfe, slotted.row_nfe)
    assert slotted.nfe >= int(slotted.row_nfe.sum()) / 2
    with pytest.raises(ValueError):
        SamplerConfig(slots=0)
    with pytest.raises(ValueError, match="eval_remasking"):
        SamplerConfig(remasking="threshold", eval_remasking="low_confidence", gen_length=8, block_length=4, steps=3)


# --------------------------------------------------------------------------- KV cache


class Recording(TinyMaskedLM):
    """The tiny model, recording every cached_forward call: (input_ids, cache given, fresh_lo, positions, logits)."""

    def __init__(self, model: TinyMaskedLM) -> None:
        super().__init__(model.config)
        self.load_state_dict(model.state_dict())
        self.eval()
        self.calls: list[tuple] = []

    def cached_forward(self, input_ids, attention_mask=None, *, cache, fresh_lo=None, fresh_hi=None, positions):
        logits, new = super().cached_forward(
            input_ids, attention_mask, cache=cache, fresh_lo=fresh_lo, fresh_hi=fresh_hi, positions=positions
        )
        self.calls.append((input_ids.clone(), attention_mask, cache is not None, fresh_lo, fresh_hi, positions, logits))
        return logits, new


def test_cached_forward_is_exact_without_a_cache_and_with_an_unchanged_one():
    model = tiny(n_layer=3)
    ids = torch.randint(3, V, (4, 20), generator=torch.Generator().manual_seed(0))
    attn = torch.ones(4, 20, dtype=torch.bool)
    attn[1, :3] = False
    exact = model(ids, attn)  # (4, 20, V)
    logits, cache = model.cached_forward(ids, attn, cache=None, positions=slice(8, 12))
    assert torch.equal(logits, exact[:, 8:12])
    assert isinstance(model, KVCacheLM) and not isinstance(ToyModel(8), KVCacheLM)
    lo, hi = torch.tensor([8, 8, 6, 8]), torch.tensor([20, 12, 12, 20])  # per-row windows
    again, _ = model.cached_forward(ids, attn, cache=cache, fresh_lo=lo, fresh_hi=hi, positions=slice(8, 12))
    assert torch.allclose(again, exact[:, 8:12], atol=1e-6)
    changed = ids.clone()
    changed[:, 9] = 3  # a token inside every window changes: 1 layer's cached keys/values cannot see it ...
    one = tiny(n_layer=1)
    _, cache1 = one.cached_forward(ids, attn, cache=None, positions=slice(8, 12))
    approx1, _ = one.cached_forward(changed, attn, cache=cache1, fresh_lo=lo, fresh_hi=hi, positions=slice(8, 12))
    assert torch.allclose(approx1, one(changed, attn)[:, 8:12], atol=1e-6)  # ... nor need to (first layer's K/V)
    approx3, _ = model.cached_forward(changed, attn, cache=cache, fresh_lo=lo, fresh_hi=hi, positions=slice(8, 12))
    assert not torch.allclose(approx3, model(changed, attn)[:, 8:12], atol=1e-4)  # deeper layers: an approximation
    with pytest.raises(ValueError, match="fresh_lo"):
        model.cached_forward(ids, attn, cache=cache, positions=slice(8, 12))
    with pytest.raises(ValueError, match="span"):
        model.cached_forward(ids, attn, cache=cache, fresh_lo=lo, fresh_hi=hi, positions=slice(2, 12))


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("decoder", ["generate", "continuous"])
def test_first_step_of_each_block_is_exact_and_later_steps_reuse_the_cache(kv_cache, decoder):
    model = Recording(tiny())
    ids, attn = queue(n=4)
    p, gen_length, block_length = ids.shape[1], 16, 4
    kw = dict(mask_id=MASK, eos_id=EOS, gen_length=gen_length, block_length=block_length, kv_cache=kv_cache)
    if decoder == "generate":
        generate(model, ids, attention_mask=attn, steps=8, generator=None, **kw)
    else:
        generate_continuous(
            model, ids, attention_mask=attn, slots=4, steps=8, remasking="low_confidence", generator=None, **kw
        )
    refreshes = [c for c in model.calls if not c[2]]
    assert len(refreshes) == gen_length // block_length  # 4 blocks, 2 steps each, every row in step
    for x, mask, _, _, _, positions, logits in refreshes:
        assert torch.equal(logits, model(x, mask, positions=positions)), "a block's first step is not exact"
    cached = [c for c in model.calls if c[2]]
    assert len(cached) == len(model.calls) - len(refreshes) == 4
    for x, _, _, fresh_lo, fresh_hi, positions, _ in cached:
        assert (fresh_lo == positions.start).all() and positions.start >= p  # the prompt and earlier blocks: cached
        expected_hi = x.shape[1] if kv_cache == "prefix" else positions.stop  # prefix recomputes the masked suffix
        assert (fresh_hi == expected_hi).all()


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_one_layer_cache_decodes_exactly(kv_cache):
    model = tiny(n_layer=1)  # the first layer's keys/values depend on their own token only: the cache is exact
    ids, attn = queue(n=5)
    kw = dict(gen_length=16, block_length=4, remasking="threshold", threshold=0.3, temperature=0.0)
    exact = continuous(model, ids, attn, slots=2, **kw)
    cached = continuous(model, ids, attn, slots=2, kv_cache=kv_cache, **kw)
    assert torch.equal(exact.tokens, cached.tokens) and torch.equal(exact.row_nfe, cached.row_nfe)
    g_exact = generate(model, ids, attention_mask=attn, mask_id=MASK, eos_id=EOS, generator=None, **kw)
    g_cached = generate(
        model, ids, attention_mask=attn, mask_id=MASK, eos_id=EOS, generator=None, kv_cache=kv_cache, **kw
    )
    assert torch.equal(g_exact.tokens, g_cached.tokens)


def test_model_without_the_cache_interface_falls_back_to_exact_decoding():
    ids, attn = queue()
    kw = dict(remasking="threshold", threshold=0.6)
    exact = continuous(ToyModel(40, scale=2.0), ids, attn, **kw)
    with pytest.warns(UserWarning, match="KVCacheLM"):
        fallback = continuous(ToyModel(40, scale=2.0), ids, attn, kv_cache="prefix", **kw)
    assert torch.equal(exact.tokens, fallback.tokens) and exact.nfe == fallback.nfe


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_cached_rows_in_different_blocks_decode_as_if_alone(kv_cache):
    model = Recording(tiny(sharpness=40.0))  # 2 layers: the cache approximates, but each row must get its own
    ids, attn = queue(n=6)
    kw = dict(gen_length=16, block_length=4, remasking="threshold", threshold=0.5, temperature=0.8, kv_cache=kv_cache)
    seeds = torch.arange(6) + 7
    out = continuous(model, ids, attn, slots=3, row_seeds=seeds, **kw)
    mixed = [c for c in model.calls if c[2] and c[3].min() < c[3].max()]  # cached steps with rows at different blocks
    assert mixed, "rows should be at different blocks in some cached step: a real test"
    x, mask, _, _, _, positions, logits = mixed[0]
    assert not isinstance(positions, slice)  # each row asks for its own block
    exact = model(x, mask).gather(1, positions[..., None].expand(-1, -1, V))  # (n, Lb, V)
    assert not torch.allclose(logits, exact, atol=1e-6), "the cache was not used"
    for i in range(6):
        alone = continuous(model, ids[i : i + 1], attn[i : i + 1], slots=1, row_seeds=seeds[i : i + 1], **kw)
        assert torch.equal(alone.tokens[0], out.tokens[i]), f"row {i} depends on its neighbours' cache windows"
        assert alone.nfe == out.row_nfe[i]


@pytest.mark.parametrize("widths", ["equal", "unequal"])
def test_cached_forward_with_per_row_windows_equals_each_row_alone(widths):
    model = tiny(n_layer=3, sharpness=10.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (4, 20), generator=g)
    attn = torch.ones(4, 20, dtype=torch.bool)
    attn[2, :2] = False
    _, cache = model.cached_forward(ids, attn, cache=None, positions=slice(0, 20))
    changed = torch.where(torch.rand(4, 20, generator=g) < 0.3, torch.randint(3, V, (4, 20), generator=g), ids)
    lo = torch.tensor([4, 8, 12, 8])
    hi = lo + 4 if widths == "equal" else torch.tensor([8, 20, 16, 12])  # equal: gathered windows; else a span
    positions = lo[:, None] + torch.arange(4)  # (4, 4) each row's own block
    logits, new = model.cached_forward(changed, attn, cache=cache, fresh_lo=lo, fresh_hi=hi, positions=positions)
    for i in range(4):
        row = slice(i, i + 1)
        alone, alone_cache = model.cached_forward(
            changed[row], attn[row], cache=cache.select(torch.tensor([i])), fresh_lo=lo[row], fresh_hi=hi[row],
            positions=slice(int(lo[i]), int(lo[i]) + 4),
        )  # fmt: skip
        assert torch.allclose(logits[row], alone, atol=1e-5)
        for mine, theirs in zip(new.keys + new.values, alone_cache.keys + alone_cache.values, strict=True):
            assert torch.allclose(mine[row], theirs, atol=1e-5)
    with pytest.raises(ValueError, match="span or windows"):
        model.cached_forward(changed, attn, cache=cache, fresh_lo=lo, fresh_hi=hi, positions=positions + 12)


def test_rollout_helpers_carry_row_nfe_and_evaluation_decoding():
    lang = tiny_config().language
    tok = build_tokenizer(lang.model)
    model = build_model(lang.model, tokenizer=tok, generator=torch.Generator().manual_seed(0)).eval()
    task = get_task("sudoku")
    examples = task.load_sample()[:5]
    ids, attn = encode_prompts(tok, [task.prompt(ex, "compact") for ex in examples], "cpu")
    cfg = lang.sampler.model_copy(update={"slots": 2, "remasking": "threshold", "threshold": 0.2})
    out = decode_and_score(model, tok, task, examples, ids, attn, cfg, "compact", torch.Generator().manual_seed(0))
    assert out.row_nfe is not None and out.row_nfe.shape == (5,)
    assert out.nfe >= int(out.row_nfe.max()) and out.nfe <= int(out.row_nfe.sum())
    assert _greedy_remasking(SamplerConfig(remasking="random")) == "low_confidence"
    assert _greedy_remasking(SamplerConfig(remasking="random", eval_remasking="threshold")) == "threshold"
    assert _greedy_remasking(SamplerConfig(remasking="threshold", eval_remasking="low_confidence")) == "low_confidence"
