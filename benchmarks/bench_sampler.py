"""Throughput of dipod's vectorised low-confidence remasking vs LLaDA's generate.py, at equal NFE.

The reference (``reference_generate``) is LLaDA's ``generate.py`` logic written out here (that file at
commit b7e6c35, with ``cfg_scale = 0`` and neither EOS option): the whole sequence's logits at every
step, Gumbel-max noise in float64 on all of them (exp(logits) / (-log u)^T), the softmax of the raw
logits over the whole sequence for the confidence, positions after the current block excluded, and a
Python loop over batch rows for each row's top-k; its noise comes from an explicit generator instead of
the global RNG. It does not exclude the mask token: where the model's best token is [MASK], LLaDA's
code "unmasks" a position to [MASK], which then stays masked, and a block can end with [MASK] tokens
left in the output; and its confidence is the softmax over the whole vocabulary, [MASK] included.
dipod's sampler sets the mask logit to -inf first (it never proposes [MASK], and its confidences are
renormalised without it, which can change which positions rank highest), and otherwise makes the same
decisions while asking the model for the current block's logits only (the tiny model then runs its last
layer's queries, MLP and head on the block alone), drawing noise and taking the softmax on the block
only, and making one batched top-k. Both run the same (untrained) tiny model for the same number of
forward passes.

Figures:
- ``tokens_per_s_over_reference``: rollout setting (temperature 0.9); goal >= 1.5.
- ``tokens_per_s_over_reference_greedy``: evaluation setting (temperature 0).
- ``greedy_tokens_identical``: fraction of completion tokens equal to the reference's, greedy. Below 1
  where the model gives [MASK] probability: LLaDA's logic then ranks positions by a confidence that
  includes it, or emits [MASK] (``greedy_reference_mask_fraction`` of its tokens), and every later
  decision of that row can differ. ``greedy_rows_identical``: fraction of rows equal throughout.
- ``greedy_identical_without_mask_preference``: 1.0 when the two give identical tokens, greedy, on the
  same model with its mask logit set to -inf (so LLaDA's logic never meets [MASK]): the decisions are
  otherwise the same.
- ``nfe_equal``: 1.0 when both made the same number of forward passes.
- ``block_forward_over_full_forward``: time of the sampler's block-only forward passes / full ones.
- ``sampler_overhead_over_reference[_greedy]``: CPU time outside the model's forward passes, reference /
  dipod, both measured inside the same runs (the time of each forward call is subtracted from the run's
  own total). On a CPU the forward passes of even the tiny model dominate the end-to-end ratio; this
  figure shows the part the decoding loop owns.
"""

from __future__ import annotations

import time

import torch

from dipod.language.config import ModelConfig
from dipod.language.models import build_model, build_tokenizer
from dipod.language.sampler import generate


def add_gumbel_noise_reference(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's Gumbel-max form: exp(logits) / (-log u)^T in float64, whose argmax samples softmax(logits / T)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def num_transfer_tokens_reference(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's schedule: each row's masked count split evenly over the steps, the remainder one per first step."""
    mask_num = mask_index.sum(dim=1, keepdim=True)  # (B, 1)
    base = mask_num // steps
    remainder = mask_num % steps
    schedule = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base  # (B, S)
    for i in range(mask_num.size(0)):
        schedule[i, : remainder[i]] += 1
    return schedule


@torch.no_grad()
def reference_generate(
    model, prompt, *, mask_id, gen_length, block_length, steps, temperature, generator, attention_mask=None
) -> tuple[torch.Tensor, int]:
    """LLaDA's generate.py (low-confidence remasking, no CFG); returns (tokens (B, P + L), NFE)."""
    batch, prompt_length = prompt.shape
    x = torch.full((batch, prompt_length + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt_length] = prompt.clone()
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(batch, gen_length, dtype=attention_mask.dtype)], -1)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    nfe = 0
    for block in range(num_blocks):
        lo = prompt_length + block * block_length
        schedule = num_transfer_tokens_reference(x[:, lo : lo + block_length] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id  # (B, T), the whole sequence
            logits = model(x, attention_mask)  # (B, T, V)
            nfe += 1
            x0 = torch.argmax(add_gumbel_noise_reference(logits, temperature, generator), dim=-1)  # may be [MASK]
            p = torch.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)  # (B, T)
            x0_p[:, lo + block_length :] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(batch):
                _, select = torch.topk(confidence[j], k=int(schedule[j, i]))
                transfer_index[j, select] = True
            x[transfer_index] = x0[transfer_index]
    return x, nfe


class TimedModel:
    """The model, with the CPU time spent inside its forward calls added up in ``seconds``."""

    def __init__(self, model, *, exclude_mask_id: int | None = None) -> None:
        self.model = model
        self.exclude_mask_id = exclude_mask_id
        self.seconds = 0.0

    def __call__(self, input_ids, attention_mask=None, positions=None):
        start = time.process_time()
        logits = self.model(input_ids, attention_mask, positions=positions)
        if self.exclude_mask_id is not None:
            logits = logits.clone()
            logits[..., self.exclude_mask_id] = -torch.inf
        self.seconds += time.process_time() - start
        return logits


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
    mask_id = tok.mask_token_id
    common = dict(mask_id=mask_id, gen_length=gen_length, block_length=block_length, steps=steps)

    figures: dict[str, float] = {}
    outputs = {}
    for label, temperature in (("", 0.9), ("_greedy", 0.0)):
        timed = {"ours": TimedModel(model), "ref": TimedModel(model)}

        def ours(temperature=temperature, m=timed["ours"]):
            return generate(
                m, prompt, eos_id=tok.eos_token_id, temperature=temperature,
                generator=torch.Generator().manual_seed(2), **common,
            )  # fmt: skip

        def reference(temperature=temperature, m=timed["ref"]):
            return reference_generate(
                m, prompt, temperature=temperature, generator=torch.Generator().manual_seed(2), **common
            )

        state = torch.cat([prompt, torch.full((batch, gen_length), mask_id)], dim=1)

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
        overhead = {"ref": [], "ours": []}
        for name, m in timed.items():  # each sampler's own time outside its forward calls, run by run
            fn = fns[name]

            def measured(fn=fn, m=m, name=name, overhead=overhead):
                m.seconds = 0.0
                start = time.process_time()
                out = fn()
                overhead[name].append(time.process_time() - start - m.seconds)
                return out

            fns[name] = measured
        times, results = _timed_interleaved(fns, repeats)
        t_ref, t_ours, t_full, t_block = times["ref"], times["ours"], times["full"], times["block"]
        (ref_tokens, ref_nfe), out = results["ref"], results["ours"]
        if not label:
            figures["block_forward_over_full_forward"] = t_block / t_full
        figures[f"sampler_overhead_over_reference{label}"] = min(overhead["ref"]) / min(overhead["ours"])
        figures[f"tokens_per_s_over_reference{label}"] = t_ref / t_ours
        figures[f"tokens_per_cpu_s{label}"] = batch * gen_length / t_ours
        figures[f"reference_tokens_per_cpu_s{label}"] = batch * gen_length / t_ref
        outputs[label] = (out, ref_tokens, ref_nfe)
    out, ref_tokens, ref_nfe = outputs["_greedy"]
    ours_completion, ref_completion = out.completion, ref_tokens[:, prompt_length:]
    figures["greedy_tokens_identical"] = float((ours_completion == ref_completion).float().mean())
    figures["greedy_rows_identical"] = float((ours_completion == ref_completion).all(-1).float().mean())
    figures["greedy_reference_mask_fraction"] = float((ref_completion == mask_id).float().mean())
    no_mask = TimedModel(model, exclude_mask_id=mask_id)
    ref_tokens_nm, _ = reference_generate(no_mask, prompt, temperature=0.0, generator=None, **common)
    ours_nm = generate(no_mask, prompt, eos_id=tok.eos_token_id, generator=None, **common)
    figures["greedy_identical_without_mask_preference"] = float(torch.equal(ours_nm.tokens, ref_tokens_nm))
    figures["nfe_equal"] = float(all(o.nfe == n == steps for o, _, n in outputs.values()))
    return {
        "figures": figures,
        "reference": (
            "LLaDA generate.py's logic (b7e6c35; no CFG, no EOS options, no mask-logit exclusion): full-sequence "
            "logits, float64 Gumbel noise and softmax over the whole sequence, per-row top-k loop; dipod asks for "
            "the block's logits only and never proposes [MASK]; same untrained tiny model "
            f"(2 layers, d=128), B={batch}, prompt {prompt_length}, gen {gen_length}, block {block_length}, "
            f"{steps} steps (equal NFE); least CPU time of {repeats} interleaved runs"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
