"""Lean scoring: logits only at the scored positions, chunked draws and gradient checkpointing give today's numbers.

Every path is compared with the one it replaces: ``masked_token_logprobs(logits_at="all")`` (full logits at every
position, sliced) and a single unchunked forward + backward without checkpointing, in float64.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dipod.bounds.chunked import chunked_draws_backward
from dipod.bounds.masked import draw_masks, elbo_from_logprobs, masked_token_logprobs
from dipod.language.config import ModelConfig
from dipod.language.model_hf import HFMaskedLM
from dipod.language.models import build_model, build_tokenizer
from dipod.objectives import MaskedScores, dipod_term, get_objective, make_params
from tests.language.test_models import (
    CONFIGURATION_SRC,
    MODELING_SRC,
    _save_custom_code,
    _tokenizer_files,
    write_bert,
    write_dream_like_model,
)

K = 3


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _tiny(n_layer=2, **overrides):
    cfg = ModelConfig(n_layer=n_layer, n_embd=32, n_head=2, max_seq_len=64, **overrides)
    tok = build_tokenizer(cfg)
    return build_model(cfg, tokenizer=tok, generator=torch.Generator().manual_seed(0)).double().eval()


def _llama_like(logits_shift: bool) -> HFMaskedLM:
    """A 2-layer LLaMA (lm_head on the final norm's output) behind the adapter, built from a config offline."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    net = LlamaForCausalLM(config)
    model = HFMaskedLM(net, mask_token_id=39, pad_token_id=0, eos_token_id=1, vocab_size=40, logits_shift=logits_shift)
    model.output_head = model.probe_output_head()
    return model


def _llada_like(directory: Path) -> HFMaskedLM:
    """The remote-code LLaDA-like model of test_models, with LLaDA's ``get_output_embeddings`` (its ff_out)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer_files(directory, mask_token=None)
    src = MODELING_SRC.replace(
        "    def forward(self, input_ids", "    def get_output_embeddings(self):\n        return self.ff_out\n\n"
        "    def forward(self, input_ids",
    )  # fmt: skip
    # Own file name: transformers keeps remote-code modules imported by name, and test_models loads the headless one.
    files = {"configuration_tiny_llada.py": CONFIGURATION_SRC, "modeling_tiny_llada_head.py": src}
    _save_custom_code(
        directory,
        files,
        "TinyLladaConfig",
        "TinyLladaModel",
        vocab_size=len(vocab),
        mask_token_id=vocab["<|mdm_mask|>"],
    )
    cfg = ModelConfig(kind="hf", path=str(directory), trust_remote_code=True)
    return build_model(cfg, tokenizer=build_tokenizer(cfg))


def _hf(kind: str, tmp_path: Path) -> HFMaskedLM:
    if kind == "bert":
        cfg = ModelConfig(kind="hf", path=str(write_bert(tmp_path / "bert")))
        model = build_model(cfg, tokenizer=build_tokenizer(cfg))
    elif kind == "llada":
        model = _llada_like(tmp_path / "llada_head")
    else:
        model = _llama_like(logits_shift=kind == "llama_shifted")
    return model.double().eval()


def _batch(model, *, padded: bool, prompt_len=5, length=6, batch=3, seed=0):
    """Prompts (left-padded when ``padded``), completions, their attention mask, valid positions and K draws."""
    g = torch.Generator().manual_seed(seed)
    low = 5  # clear of the special ids at the start of every test vocabulary
    high = min(model.vocab_size, 30)
    prompt = torch.randint(low, high, (batch, prompt_len), generator=g)
    completion = torch.randint(low, high, (batch, length), generator=g)
    prompt_attn = torch.ones_like(prompt, dtype=torch.bool)
    if padded:
        prompt_attn[1, :2] = False
        prompt_attn[2, :1] = False
        prompt = prompt.masked_fill(~prompt_attn, model.pad_token_id)
    attn = torch.cat([prompt_attn, torch.ones_like(completion, dtype=torch.bool)], 1)
    valid = torch.ones_like(completion, dtype=torch.bool)
    valid[0, 4:] = False
    draws = draw_masks(valid, K, generator=g)
    return prompt, completion, attn, valid, draws


def _check_logits_at(model, *, padded: bool) -> None:
    prompt, completion, attn, valid, draws = _batch(model, padded=padded)
    score = dict(mask_id=model.mask_token_id, attention_mask=attn)
    full = masked_token_logprobs(model, prompt, completion, draws, **score)  # (B, K, L) today's path
    span = masked_token_logprobs(model, prompt, completion, draws, logits_at="completion", **score)
    lean = masked_token_logprobs(model, prompt, completion, draws, logits_at="masked", valid=valid, **score)
    assert full.dtype == span.dtype == lean.dtype == torch.float64
    torch.testing.assert_close(span, full, rtol=0, atol=1e-10)
    scored = draws.mask & valid[:, None, :]
    torch.testing.assert_close(lean[scored], full[scored], rtol=0, atol=1e-10)
    assert torch.equal(lean[~scored], torch.zeros_like(lean[~scored]))

    grads = []
    for logp in (full, lean):
        model.zero_grad(set_to_none=True)
        elbo_from_logprobs(logp, draws, valid).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- logits at positions


@pytest.mark.parametrize("n_layer", [1, 3])
def test_tiny_logits_at_a_bool_mask_equal_the_full_forward_there(n_layer):
    model = _tiny(n_layer)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (3, 9), generator=g)
    attn = torch.ones_like(ids, dtype=torch.bool)
    attn[1, :3] = False
    full = model(ids, attn)  # (3, 9, V)
    positions = torch.rand(3, 9, generator=g) < 0.4
    positions[:, :2] = False
    got = model(ids, attn, positions=positions)
    assert got.shape == (int(positions.sum()), model.vocab_size)
    torch.testing.assert_close(got, full[positions], rtol=0, atol=1e-12)
    assert model(ids, attn, positions=torch.zeros_like(positions)).shape == (0, model.vocab_size)
    with pytest.raises(ValueError, match=r"positions must be an \(N, 9\) bool tensor, got torch.int64"):
        model(ids, attn, positions=positions.long())


@pytest.mark.parametrize("padded", [False, True])
def test_tiny_scoring_at_masked_positions_equals_the_full_logits_path(padded):
    _check_logits_at(_tiny(), padded=padded)


@pytest.mark.parametrize("kind", ["bert", "llama", "llama_shifted", "llada"])
@pytest.mark.parametrize("padded", [False, True])
def test_hf_scoring_gathers_before_the_output_head_and_equals_the_full_logits_path(kind, padded, tmp_path):
    model = _hf(kind, tmp_path)
    assert model.output_head is model.net.get_output_embeddings()  # the lean path is the one tested
    calls = []
    model.output_head.register_forward_hook(lambda _m, _a, out: calls.append(tuple(out.shape)))
    prompt, completion, _, _, draws = _batch(model, padded=padded)
    masked_token_logprobs(model, prompt, completion, draws, mask_id=model.mask_token_id, logits_at="masked")
    assert calls == [(int(draws.mask.sum()), model.net.config.vocab_size)]  # never (B*K, T, V)
    _check_logits_at(model, padded=padded)


def test_hf_model_without_an_output_projection_falls_back_to_slicing(tmp_path):
    cfg = ModelConfig(kind="hf", path=str(write_dream_like_model(tmp_path / "dream")), trust_remote_code=True)
    model = build_model(cfg, tokenizer=build_tokenizer(cfg))
    assert model.output_head is None
    ids = torch.randint(3, 10, (2, 6))
    positions = torch.zeros(2, 6, dtype=torch.bool)
    positions[0, 2], positions[1, 4] = True, True
    torch.testing.assert_close(model(ids, positions=positions), model(ids)[positions])


# ----------------------------------------------------------------------------- chunks and checkpointing


def _fpo_dipod(model, *, logits_at, chunk_size, checkpointing=False):
    """FPO + DiPOD on K = 3 draws with ratios off 1: (loss, elbo, grads) after one (chunked) backward."""
    model = copy.deepcopy(model)
    if checkpointing:
        model.gradient_checkpointing_enable()
    prompt, completion, attn, valid, draws = _batch(model, padded=True, seed=2)
    score = dict(mask_id=model.mask_token_id, attention_mask=attn)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        old = masked_token_logprobs(model, prompt, completion, draws, **score)
        old = old + 0.2 * torch.randn(old.shape, generator=g, dtype=old.dtype)
    adv = torch.randn(prompt.shape[0], generator=g, dtype=torch.float64)
    cfg = make_params("language", "fpo", clip_low=0.1, clip_high=0.1)

    def loss_fn(token_logp):
        new = MaskedScores(token_logp, draws, valid)
        out = get_objective("language", "fpo").fn(new, MaskedScores(old, draws, valid), adv, cfg)
        return out + dipod_term(out.elbo, 0.05)

    def score_fn(chunk):
        return masked_token_logprobs(
            model, prompt, completion, chunk, logits_at=logits_at, valid=valid, **score
        )  # (B, k, L)

    out = chunked_draws_backward(score_fn, loss_fn, draws, chunk_size=chunk_size)
    return out, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("chunk_size", [1, 2])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lean_chunked_checkpointed_update_equals_todays_update(chunk_size, checkpointing):
    model = _tiny()
    want, want_grads = _fpo_dipod(model, logits_at="all", chunk_size=None)
    got, got_grads = _fpo_dipod(model, logits_at="masked", chunk_size=chunk_size, checkpointing=checkpointing)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.elbo, want.elbo, rtol=0, atol=1e-10)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def _count_calls(module) -> list:
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))  # a recomputation may stop before the module returns
    return calls


def test_tiny_gradient_checkpointing_recomputes_blocks_in_eval_mode():
    model = _tiny(gradient_checkpointing=True)
    assert model.gradient_checkpointing and not model.training
    calls = _count_calls(model.blocks[0].mlp)
    model(torch.randint(5, 40, (2, 8))).sum().backward()
    assert len(calls) == 2  # forward, then again in the backward pass
    with torch.no_grad():
        model(torch.randint(5, 40, (2, 8)))
    assert len(calls) == 3  # no graph, nothing to recompute
    model.gradient_checkpointing_disable()
    model(torch.randint(5, 40, (2, 8))).sum().backward()
    assert len(calls) == 4


def test_hf_gradient_checkpointing_through_transformers_in_eval_mode(tmp_path):
    path = write_bert(tmp_path / "bert")
    built = []
    for on in (False, True):
        cfg = ModelConfig(kind="hf", path=str(path), gradient_checkpointing=on)
        built.append(build_model(cfg, tokenizer=build_tokenizer(cfg)).double().eval())
    plain, checkpointed = built
    assert checkpointed.net.config.hidden_dropout_prob > 0  # dropout would break the equality below
    calls = _count_calls(checkpointed.net.bert.encoder.layer[0].attention)
    prompt, completion, attn, valid, draws = _batch(plain, padded=True)
    grads = []
    for model in (plain, checkpointed):
        logp = masked_token_logprobs(
            model, prompt, completion, draws, mask_id=model.mask_token_id, attention_mask=attn, logits_at="masked"
        )
        elbo_from_logprobs(logp, draws, valid).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    assert len(calls) == 2  # recomputed in the backward pass although the model is in eval mode
    assert not any(m.training for m in checkpointed.net.modules())  # and every module is back in eval mode
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    checkpointed.gradient_checkpointing_disable()
    checkpointed(prompt).sum().backward()
    assert len(calls) == 3  # one forward, no recomputation


def test_config_keys_for_lean_scoring_are_checked():
    from pydantic import ValidationError

    from dipod.language.config import LanguageConfig

    assert LanguageConfig().draw_chunk_size is None and not ModelConfig().gradient_checkpointing
    assert LanguageConfig(draw_chunk_size=2).draw_chunk_size == 2
    with pytest.raises(ValidationError, match="draw_chunk_size"):
        LanguageConfig(draw_chunk_size=0)
    assert not _tiny().gradient_checkpointing
