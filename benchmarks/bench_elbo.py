"""K-draw ELBO forward+backward vs a bare forward+backward of the same K*B rows (goal <= 1.10)."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.timing import interleaved_medians
from dipod.bounds.masked import draw_masks, masked_elbo
from dipod.language.model_tiny import TinyConfig, TinyMaskedLM


def run(quick: bool) -> dict:
    prompt_len, length, batch, draws_k = 32, 64, 8, 4
    cfg = TinyConfig(vocab_size=64, mask_token_id=63, pad_token_id=0, eos_token_id=1, max_seq_len=prompt_len + length)
    model = TinyMaskedLM(cfg, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, 63, (batch, prompt_len), generator=g)
    completion = torch.randint(2, 63, (batch, length), generator=g)
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, draws_k, generator=g)
    noisy = torch.cat([prompt, completion], 1).repeat_interleave(draws_k, 0)  # (K*B, T): the same rows, bare
    targets = completion.repeat_interleave(draws_k, 0)

    def elbo_step():
        model.zero_grad(set_to_none=True)
        masked_elbo(model, prompt, completion, valid, draws, mask_id=cfg.mask_token_id).mean().backward()

    def bare_step():
        model.zero_grad(set_to_none=True)
        logits = model(noisy, None)[:, prompt_len:]
        nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1)).backward()

    med = interleaved_medians({"elbo": elbo_step, "bare": bare_step}, repeats=10 if quick else 40)
    rows, total = draws_k * batch, prompt_len + length
    return {
        "figures": {"fwd_bwd_over_bare": med["elbo"] / med["bare"]},
        "reference": f"bare forward+backward (cross-entropy) of the tiny model on the same K*B={rows} rows, T={total}",
    }
