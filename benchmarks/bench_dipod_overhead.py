"""DiPOD's cost: FPO + DiPOD step time over FPO step time, and the forward passes the term adds.

Both variants run the same step on a tiny bidirectional transformer with the core bounds and
objectives: one batched forward pass over K count-scheme draws (``masked_token_logprobs``), the FPO
ratio loss, backward, AdamW. The DiPOD variant adds ``dipod_term(out.elbo, beta)``, which reuses the
ELBO tensor the ratio already computed. Steps alternate between the variants (interleaved, order
swapped every repetition) and the ratio is of the medians. ``extra_forwards`` counts model calls
with a forward hook and must be 0.
"""

from __future__ import annotations

import statistics
import time

import torch

from dipod.bounds.masked import draw_masks, masked_token_logprobs
from dipod.objectives import MaskedScores, dipod_term, get_objective

VOCAB, P, L, B, K = 32, 16, 32, 24, 4


class TinyMaskedLM(torch.nn.Module):
    """A 2-layer bidirectional transformer: logits_fn(input_ids, attention_mask) -> (N, T, V)."""

    def __init__(self, vocab: int = VOCAB, width: int = 64, layers: int = 2, max_len: int = P + L) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab + 1, width)  # + the mask token
        self.pos = torch.nn.Parameter(torch.zeros(max_len, width))
        layer = torch.nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, vocab)
        self.mask_id = vocab

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        pad = None if attention_mask is None else ~attention_mask
        return self.head(self.encoder(h, src_key_padding_mask=pad))


class _Variant:
    """One model + optimiser running FPO steps with or without the DiPOD term."""

    def __init__(self, beta: float, seed: int) -> None:
        torch.manual_seed(seed)  # benchmark set-up only: both variants start from the same weights
        self.model = TinyMaskedLM()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.beta = beta
        self.forwards = 0
        self.model.register_forward_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        self.objective = get_objective("language", "fpo")

    def step(self, batch: dict, cfg) -> float:
        start = time.perf_counter()
        token_logp = masked_token_logprobs(
            self.model, batch["prompt"], batch["completion"], batch["draws"], mask_id=self.model.mask_id
        )
        new = MaskedScores(token_logp, batch["draws"], batch["valid"])
        old = MaskedScores(batch["old_logp"], batch["draws"], batch["valid"])
        out = self.objective.fn(new, old, batch["adv"], cfg)
        loss = out.loss
        if self.beta > 0:
            loss = loss + dipod_term(out.elbo, self.beta).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def _batch(generator: torch.Generator) -> dict:
    valid = torch.ones(B, L, dtype=torch.bool)
    return {
        "prompt": torch.randint(0, VOCAB, (B, P), generator=generator),
        "completion": torch.randint(0, VOCAB, (B, L), generator=generator),
        "valid": valid,
        "draws": draw_masks(valid, K, generator=generator, scheme="count"),
        "adv": torch.randn(B, generator=generator),
        "old_logp": torch.full((B, K, L), -3.5),
    }


def run(quick: bool) -> dict:
    from dipod.objectives import make_params

    torch.set_num_threads(1)
    cfg = make_params("language", "fpo")
    plain, dipod = _Variant(0.0, seed=0), _Variant(0.05, seed=0)
    generator = torch.Generator().manual_seed(0)
    batches = [_batch(generator) for _ in range(4)]
    for variant in (plain, dipod):  # warm-up
        for batch in batches[:2]:
            variant.step(batch, cfg)
    plain.forwards = dipod.forwards = 0
    reps = 100 if quick else 400
    times = {"plain": [], "dipod": []}
    for rep in range(reps):
        batch = batches[rep % len(batches)]
        order = (("plain", plain), ("dipod", dipod)) if rep % 2 == 0 else (("dipod", dipod), ("plain", plain))
        for name, variant in order:
            times[name].append(variant.step(batch, cfg))
    ratio = statistics.median(times["dipod"]) / statistics.median(times["plain"])
    return {
        "figures": {
            "step_time_ratio": ratio,
            "extra_forwards": float(dipod.forwards - plain.forwards),
            "fpo_step_ms": 1e3 * statistics.median(times["plain"]),
        },
        "reference": f"FPO step without the DiPOD term, same model and batch (B={B}, K={K}, L={L}), "
        f"{reps} interleaved repetitions, medians",
    }


if __name__ == "__main__":
    print(run(quick=True))
