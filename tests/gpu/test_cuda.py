"""The CUDA paths: the GPU gives the CPU's numbers, bf16 autocast stays close to float32, sampling is
reproducible, and a language RL step runs with LoRA, bf16 weights and an HF remote-code model.

Skipped where no GPU is present (CI has none). ``DIPOD_TEST_DEVICE=cpu`` runs them on the CPU instead, which
checks the tests themselves (bf16 autocast is then a no-op).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from dipod.bounds.masked import draw_masks, elbo_from_logprobs, masked_token_logprobs
from dipod.language.config import ModelConfig
from dipod.language.lora import has_adapters
from dipod.language.models import bf16_autocast, build_model, build_tokenizer
from dipod.language.trainer import LanguageTrainer
from tests.language.language_helpers import tiny_config
from tests.language.test_models import write_remote_code_model

DEVICE = torch.device(os.environ.get("DIPOD_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a GPU (DIPOD_TEST_DEVICE=cpu to check)"
)


def _scored_batch(seed: int = 0):
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=64, max_seq_len=48, charset="0123456789")
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer=tokenizer, generator=torch.Generator().manual_seed(seed)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, 10, (6, 16), generator=gen)  # (B, P)
    completion = torch.randint(0, 10, (6, 24), generator=gen)  # (B, L)
    valid = torch.arange(24)[None, :] < torch.tensor([24, 20, 12, 24, 5, 17])[:, None]  # (B, L)
    draws = draw_masks(valid, 4, generator=torch.Generator().manual_seed(seed + 2))
    return model, tokenizer, prompt, completion, valid, draws


def _elbo(model, tokenizer, prompt, completion, valid, draws, device, bf16=False):
    on = lambda t: t.to(device)  # noqa: E731
    draws = draws.to(device)
    with torch.no_grad(), bf16_autocast(bf16, device):
        logp = masked_token_logprobs(
            model.to(device), on(prompt), on(completion), draws, mask_id=tokenizer.mask_token_id,
            logits_at="masked", valid=on(valid),
        )  # fmt: skip
    return elbo_from_logprobs(logp.float(), draws, on(valid)).cpu()  # (B,)


def test_elbo_on_the_device_equals_the_cpus():
    batch = _scored_batch()
    cpu = _elbo(*batch, torch.device("cpu"))
    torch.testing.assert_close(_elbo(*batch, DEVICE), cpu, rtol=1e-4, atol=1e-3)


def test_bf16_autocast_elbo_is_close_to_float32():
    batch = _scored_batch()
    full, half = _elbo(*batch, DEVICE), _elbo(*batch, DEVICE, bf16=True)
    valid_tokens = batch[4].sum(-1)  # (B,)
    assert torch.isfinite(half).all()
    assert ((half - full).abs() / valid_tokens).max() < 0.02  # nats per token: bf16's 8-bit mantissa, fp32 softmax


def _device_config(**language):
    return tiny_config(train={"device": str(DEVICE), "bf16": True}, language=language)


def test_rollouts_on_the_device_are_reproducible_and_a_step_is_finite():
    first, second = LanguageTrainer(_device_config()), LanguageTrainer(_device_config())
    a, _ = first.rollout()
    b, _ = second.rollout()
    assert a.completion_ids.device.type == DEVICE.type
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.adv, b.adv)
    metrics = first.train_step()
    assert all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm", "elbo_mean", "dipod_reg"))
    assert metrics["skipped_updates"] == 0


def test_lora_step_on_a_remote_code_model_in_bf16(tmp_path):
    path = write_remote_code_model(tmp_path / "llada")
    model = {
        "kind": "hf", "path": str(path), "trust_remote_code": True, "dtype": "bfloat16", "finetune": "lora",
        "lora_target_modules": ["ff_out"], "lora_r": 4, "lora_alpha": 8,
    }  # fmt: skip
    cfg = tiny_config(
        train={"device": str(DEVICE), "bf16": True},
        objective={"name": "fpo", "dipod_beta": 0.05, "kl_beta": 0.04, "kl_type": "elbo_difference"},
        language={"model": model, "sampler": {"gen_length": 16, "block_length": 16, "steps": 4}},
    )
    trainer = LanguageTrainer(cfg)
    assert has_adapters(trainer.model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train_step()
    assert all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm", "elbo_mean", "kl_ref"))
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)  # the bf16 base weights never move
    base = next(p for n, p in trainer.model.named_parameters() if "lora_" not in n and p.dim() == 2)
    assert base.dtype == torch.bfloat16 and base.device.type == DEVICE.type
