"""Throughput of dipod's vectorised low-confidence remasking vs a per-row reference, at equal NFE.

The reference is written here in the style of LLaDA's ``generate.py``: the model's logits for the
whole sequence, Gumbel noise in float64 on all of them (exp(logits) / (-log u)^T), softmax over the
whole sequence, and a Python loop over batch rows for the top-k of each row. It differs from
``generate.py`` in one way, taken from dipod's sampler so that both make the same decisions: the mask
token's logit is set to -inf, so the mask token is never proposed (``generate.py`` can propose it and
then write it back, leaving the position masked). dipod's sampler makes the
same decisions but asks the model for the current block's logits only (the tiny model then runs its
last layer's queries, MLP and head on the block alone; the values are those of the full forward),
draws noise and takes the softmax on the block only, and makes one batched top-k. Both run the same
tiny model for the same number of forward passes (NFE); greedy decoding must give identical tokens.

Figures:
- ``tokens_per_s_over_reference``: rollout setting (temperature 0.9); goal >= 1.5.
- ``tokens_per_s_over_reference_greedy``: evaluation setting (temperature 0).
- ``greedy_identical``: 1.0 when both give the same tokens with temperature 0.
- ``nfe_equal``: 1.0 when both made the same number of forward passes.
- ``block_forward_over_full_forward``: time of the sampler's block-only forward passes / full ones.
- ``sampler_overhead_over_reference[_greedy]``: time outside the model's forward passes, reference
  (after full forwards) / dipod (after block forwards). On a CPU the forward passes of even the tiny
  model dominate the end-to-end ratio; this figure shows the part the decoding loop owns.
"""

from __future__ import annotations

import time

import torch

from dipod.language.config import ModelConfig
from dipod.language.models import build_model, build_tokenizer
from dipod.language.sampler import generate, num_transfer_tokens


def add_gumbel_noise_reference(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's Gumbel-max form: exp(logits) / (-log u)^T in float64, whose argmax samples softmax(logits / T)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


@torch.no_grad()
def reference_generate(
    model, prompt, *, mask_id, gen_length, block_length, steps, temperature, generator
) -> tuple[torch.Tensor, int]:
    """Per-row low-confidence remasking in LLaDA's style; returns (tokens (B, P + L), NFE)."""
    batch, prompt_length = prompt.shape
    x = torch.full((batch, prompt_length + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt_length] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    nfe = 0
    for block in range(num_blocks):
        lo = prompt_length + block * block_length
        hi = lo + block_length
        schedule = num_transfer_tokens(x[:, lo:hi] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x, None).float()
            nfe += 1
            logits[..., mask_id] = -torch.inf  # as dipod's sampler: never propose the mask token
            x0 = torch.argmax(add_gumbel_noise_reference(logits, temperature, generator), dim=-1)
            p = torch.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(batch):
                _, select = torch.topk(confidence[j], k=int(schedule[j, i]))
                transfer_index[j, select] = True
            x[transfer_index] = x0[transfer_index]
    return x, nfe


def _timed_interleaved(fns: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Least CPU time (process time) of ``repeats`` runs of each function, run in turn (A B C A B C ...).

    CPU time rather than wall time, and interleaved runs, so that other work on a shared machine (time
    spent waiting for a core) does not enter the ratio. Returns the times and each function's last output.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    outputs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            outputs[name] = fn()
            times[name].append(time.process_time() - start)
    return {name: min(t) for name, t in times.items()}, outputs


def run(quick: bool) -> dict:
    batch, prompt_length, gen_length, block_length = 24, 32, 64, 32
    steps = gen_length // 2 if quick else gen_length  # 2 tokens per step (d1's 128 for 256) or 1 (LLaDA's default)
    repeats = 2 if quick else 5
    tok = build_tokenizer(ModelConfig())
    model = build_model(ModelConfig(), tokenizer=tok, generator=torch.Generator().manual_seed(0)).eval()
    g = torch.Generator().manual_seed(1)
    charset_ids = torch.tensor(tok.encode("0123456789"))
    prompt = charset_ids[torch.randint(len(charset_ids), (batch, prompt_length), generator=g)]
    num_blocks = gen_length // block_length
    common = dict(mask_id=tok.mask_token_id, gen_length=gen_length, block_length=block_length, steps=steps)

    figures: dict[str, float] = {}
    outputs = {}
    for label, temperature in (("", 0.9), ("_greedy", 0.0)):

        def ours(temperature=temperature):
            return generate(
                model, prompt, eos_id=tok.eos_token_id, temperature=temperature,
                generator=torch.Generator().manual_seed(2), **common,
            )  # fmt: skip

        def reference(temperature=temperature):
            return reference_generate(
                model, prompt, temperature=temperature, generator=torch.Generator().manual_seed(2), **common
            )

        state = torch.cat([prompt, torch.full((batch, gen_length), tok.mask_token_id)], dim=1)

        def full_forwards(state=state):
            with torch.no_grad():
                for _ in range(steps):
                    model(state, None)

        def block_forwards(state=state):
            with torch.no_grad():
                for step in range(steps):
                    lo = prompt_length + step // (steps // num_blocks) * block_length
                    model(state, None, positions=slice(lo, lo + block_length))

        ours()  # warm-up
        fns = {"ref": reference, "ours": ours, "full": full_forwards, "block": block_forwards}
        times, results = _timed_interleaved(fns, repeats)
        t_ref, t_ours, t_full, t_block = times["ref"], times["ours"], times["full"], times["block"]
        (ref_tokens, ref_nfe), out = results["ref"], results["ours"]
        if not label:
            figures["block_forward_over_full_forward"] = t_block / t_full
        figures[f"sampler_overhead_over_reference{label}"] = max(t_ref - t_full, 0.0) / max(t_ours - t_block, 1e-9)
        figures[f"tokens_per_s_over_reference{label}"] = t_ref / t_ours
        figures[f"tokens_per_cpu_s{label}"] = batch * gen_length / t_ours
        figures[f"reference_tokens_per_cpu_s{label}"] = batch * gen_length / t_ref
        outputs[label] = (out, ref_tokens, ref_nfe)
    out, ref_tokens, ref_nfe = outputs["_greedy"]
    figures["greedy_identical"] = float(torch.equal(out.tokens, ref_tokens))
    figures["nfe_equal"] = float(all(o.nfe == n == steps for o, _, n in outputs.values()))
    return {
        "figures": figures,
        "reference": (
            "LLaDA-style per-row top-k loop on full-sequence logits with float64 Gumbel noise and softmax over the "
            "whole sequence, with dipod's mask-logit exclusion (generate.py has none); dipod asks for the block's "
            "logits only; same tiny model "
            f"(2 layers, d=128), B={batch}, prompt {prompt_length}, gen {gen_length}, block {block_length}, "
            f"{steps} steps (equal NFE); least CPU time of {repeats} interleaved runs"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
