"""K-draw ELBO forward+backward vs a bare forward+backward of the same K*B rows (goal <= 1.10)."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.timing import interleaved_medians
from dipod.bounds.masked import draw_masks, masked_elbo


class Encoder(nn.Module):
    """A small bidirectional transformer masked LM standing in for any model with the logits interface."""

    def __init__(self, vocab: int, length: int, d: int = 128, layers: int = 2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(length, d))
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.body(self.tok(ids) + self.pos))


def run(quick: bool) -> dict:
    torch.manual_seed(0)
    vocab, prompt_len, length, batch, draws_k = 64, 32, 64, 8, 4
    mask_id = vocab - 1
    model = Encoder(vocab, prompt_len + length)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, mask_id, (batch, prompt_len), generator=g)
    completion = torch.randint(0, mask_id, (batch, length), generator=g)
    valid = torch.ones_like(completion, dtype=torch.bool)
    draws = draw_masks(valid, draws_k, generator=g)
    noisy = torch.cat([prompt, completion], 1).repeat_interleave(draws_k, 0)  # (K*B, T) the same rows, bare
    targets = completion.repeat_interleave(draws_k, 0)

    def elbo_step():
        model.zero_grad(set_to_none=True)
        masked_elbo(model, prompt, completion, valid, draws, mask_id=mask_id).mean().backward()

    def bare_step():
        model.zero_grad(set_to_none=True)
        logits = model(noisy)[:, prompt_len:]
        nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)).backward()

    med = interleaved_medians({"elbo": elbo_step, "bare": bare_step}, repeats=10 if quick else 40)
    return {
        "figures": {"fwd_bwd_over_bare": med["elbo"] / med["bare"]},
        "reference": f"bare forward+backward (cross-entropy) of the same K*B={draws_k * batch} rows, T={prompt_len + length}",
    }
