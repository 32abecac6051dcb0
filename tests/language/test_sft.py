"""SFT with the masked-diffusion loss: exact value on a uniform model, the loss falls, save and reload
(tiny, LoRA-merged, and HF models), reproducible dropout."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch

from dipod.language.lora import has_adapters, reference_mode
from dipod.language.models import build_model, build_tokenizer
from dipod.language.sft import SFTTrainer, masked_diffusion_loss, merge_adapters, sft_tensors
from dipod.language.tasks import get_task
from dipod.runs.sft import SFTInterrupted, train_sft
from tests.language.language_helpers import tiny_config


class Uniform(torch.nn.Module):
    """Logits all zero: every token has probability 1 / V, so -ELBO per token is exactly log V."""

    mask_token_id = 1

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        return torch.zeros(*input_ids.shape, self.vocab)


def test_loss_of_uniform_model_is_log_vocab():
    prompt = torch.randint(3, 10, (5, 4))
    completion = torch.randint(3, 10, (5, 6))
    attn = torch.ones_like(prompt, dtype=torch.bool)
    loss = masked_diffusion_loss(
        Uniform(12), prompt, attn, completion, num_draws=3, generator=torch.Generator().manual_seed(0)
    )
    # each draw: weight L / n times n masked tokens of log(1/12), divided by L -> -log 12 per draw
    assert math.isclose(float(loss), math.log(12), rel_tol=1e-6)


def test_loss_is_the_same_with_logits_only_where_scored(tiny_cfg):
    from dipod.language.models import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg.language.model, tokenizer=build_tokenizer(tiny_cfg.language.model))
    prompt, completion = torch.randint(3, 10, (3, 5)), torch.randint(3, 10, (3, 7))
    attn = torch.ones_like(prompt, dtype=torch.bool)
    losses = [
        masked_diffusion_loss(
            model, prompt, attn, completion, num_draws=2, generator=torch.Generator().manual_seed(1), logits_at=where
        )
        for where in ("all", "masked")
    ]
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)


def test_targets_are_eos_padded_to_gen_length(tiny_cfg):
    model_cfg = tiny_cfg.language.model.model_copy(update={"charset": "0123456789+-*/(),:"})
    tok = build_tokenizer(model_cfg)
    task = get_task("countdown")
    ex = task.load_sample()[:2]
    prompt_ids, prompt_attn, completion = sft_tensors(tok, task, ex, "compact", 24, "cpu")
    assert completion.shape == (2, 24)
    text = task.target(ex[0], "compact")
    assert tok.decode(completion[0]) == text
    assert (completion[0, len(text) :] == tok.eos_token_id).all()
    assert prompt_attn.dtype == torch.bool and prompt_ids.shape == prompt_attn.shape


def test_an_interrupted_sft_exports_nothing_until_resumed(tmp_path, monkeypatch):
    cfg = tiny_config(language={"sft": {"steps": 4, "eval_every": 0}})
    real_step = SFTTrainer.train_step

    def interrupting_step(self):
        out = real_step(self)
        if self.step == 2:
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(SFTTrainer, "train_step", interrupting_step)
    with pytest.raises(SFTInterrupted, match="after step 2"):
        train_sft(cfg, out_dir=tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    monkeypatch.setattr(SFTTrainer, "train_step", real_step)
    _, _, rows = train_sft(cfg, out_dir=tmp_path, resume="always")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and (tmp_path / "model.safetensors").is_file()


def test_sft_lowers_the_loss_and_saves(tmp_path):
    cfg = tiny_config(language={"sft": {"steps": 40, "eval_every": 0}})
    model, tok, history = train_sft(cfg, out_dir=tmp_path)
    first = sum(r["loss"] for r in history[:5]) / 5
    last = sum(r["loss"] for r in history[-5:]) / 5
    assert last < first - 0.2, (first, last)
    assert {"eval/accuracy", "eval/reward", "eval/effective_tokens", "eval/nfe"} <= set(history[-1])
    reloaded = build_model(cfg.language.model.model_copy(update={"path": str(tmp_path)}))
    ids = torch.randint(3, tok.vocab_size, (2, 32))
    torch.testing.assert_close(reloaded(ids), model(ids), rtol=0, atol=0)


def test_shipped_sudoku_base_loads_and_is_moderately_good():
    """The shipped base solves some but not all blanks (room for RL); greedy decoding on 32 puzzles."""
    from dipod.language.trainer import LanguageTrainer
    from dipod.runs.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs/language/sudoku_fpo_dipod.yaml", ["language.data.eval_size=32"])
    metrics = LanguageTrainer(cfg).evaluate()
    assert 0.3 <= metrics["eval/accuracy"] <= 0.75, metrics


# --------------------------------------------------------------------------- LoRA merge, HF saving, dropout seeding


def _sft_with_logits_before_merge(cfg, out_dir, ids, monkeypatch):
    """Run ``train_sft`` and record the trained model's logits on ``ids`` just before its adapters are merged."""
    from dipod.language import sft

    before = {}
    real_merge = sft.merge_adapters

    def recording_merge(model):
        with torch.no_grad():
            before["logits"] = model(ids).clone()
            before["lora"] = has_adapters(model)
        return real_merge(model)

    monkeypatch.setattr(sft, "merge_adapters", recording_merge)
    model, tok, _ = train_sft(cfg, out_dir=out_dir)
    return model, tok, before


def test_lora_sft_saves_a_merged_plain_model_with_the_trained_logits(tmp_path, monkeypatch):
    cfg = tiny_config(language={"model": {"finetune": "lora"}, "sft": {"steps": 4, "eval_every": 0}})
    ids = torch.randint(3, 13, (2, 32), generator=torch.Generator().manual_seed(0))
    model, _, before = _sft_with_logits_before_merge(cfg, tmp_path, ids, monkeypatch)
    assert before["lora"] and not has_adapters(model)
    assert not any("lora_" in k or "base_layer" in k for k in model.state_dict())
    base = build_model(
        cfg.language.model.model_copy(update={"finetune": "full"}), generator=torch.Generator().manual_seed(cfg.seed)
    )  # the initial weights SFT started from
    assert set(model.state_dict()) == set(base.state_dict())  # the plain model's names
    reloaded = build_model(cfg.language.model.model_copy(update={"path": str(tmp_path), "finetune": "full"}))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), model(ids), rtol=0, atol=0)
        torch.testing.assert_close(reloaded(ids), before["logits"], rtol=1e-4, atol=1e-5)  # merge = adapters
        assert not torch.allclose(reloaded(ids), base(ids))  # training changed it


def test_merge_adapters_keeps_the_adapted_function():
    cfg = tiny_config(language={"model": {"finetune": "lora"}}).language.model
    model = build_model(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))  # non-zero adapters
    ids = torch.randint(3, 13, (3, 20), generator=torch.Generator().manual_seed(2))
    adapted = model(ids).detach()
    with reference_mode(model) as ref:
        base_logits = ref(ids).detach()
    assert not torch.allclose(adapted, base_logits)
    assert merge_adapters(model) is model and not has_adapters(model)
    torch.testing.assert_close(model(ids), adapted, rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


def test_hf_sft_with_lora_saves_a_model_that_loads_by_path(tmp_path, monkeypatch):
    from tests.language.test_models import write_remote_code_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_remote_code_model(tmp_path / "llada_sft_base")
    model_section = {
        "kind": "hf", "path": str(path), "trust_remote_code": True,
        "finetune": "lora", "lora_target_modules": ["ff_out"],
    }  # fmt: skip
    cfg = tiny_config(language={"model": model_section, "sft": {"steps": 2, "batch_size": 8, "eval_every": 0}})
    out = tmp_path / "llada_sft_out"
    tok = build_tokenizer(cfg.language.model)
    ids = torch.tensor([tok.encode("1234"), tok.encode("4321")])
    model, _, before = _sft_with_logits_before_merge(cfg, out, ids, monkeypatch)
    assert before["lora"] and not has_adapters(model)
    reloaded_cfg = cfg.language.model.model_copy(update={"path": str(out), "finetune": "full"})
    reloaded = build_model(reloaded_cfg, tokenizer=build_tokenizer(reloaded_cfg))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), model(ids), rtol=0, atol=0)
        torch.testing.assert_close(reloaded(ids), before["logits"], rtol=1e-4, atol=1e-5)


def test_sft_with_dropout_is_reproducible_from_the_seed():
    cfg = tiny_config(language={"model": {"dropout": 0.1}, "sft": {"steps": 3, "batch_size": 8, "eval_every": 0}})
    a, _, history_a = train_sft(cfg)
    torch.manual_seed(12345)  # a different global RNG state between the runs must not matter
    global_state = torch.get_rng_state()
    b, _, history_b = train_sft(cfg)
    assert torch.equal(torch.get_rng_state(), global_state), "SFT advanced the caller's RNG"
    assert [r["loss"] for r in history_a] == [r["loss"] for r in history_b]
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    c, _, _ = train_sft(cfg.model_copy(update={"seed": cfg.seed + 1}))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
