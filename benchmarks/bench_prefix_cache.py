"""Block-wise decoding with the prefix KV cache vs without it (exact), on the built-in tiny model.

The prefix cache (Fast-dLLM's approximation, ``kv_cache="prefix"``) runs an exact forward pass at the
first step of each block and keeps its keys/values of the prompt and the finished blocks for the block's
other steps, which recompute the current block and the masked positions after it only. ``dual`` keeps
the masked positions after the block too and recomputes the block alone.

No shipped model solves a task with 256-token completions, so the two figures come from two setups:
- speed, at gen 256, prompt 128 (block 32, 256 steps: one token per step, LLaDA's default; 64 steps
  quick), batch 8: the default tiny model (2 layers, d = 128, max_seq_len 384, the built-in character
  vocabulary) with its fresh weights, greedy low-confidence decoding with and without the cache (equal
  NFE, so tokens/s is the inverse CPU-time ratio; least CPU time of interleaved runs); the figures
  ``..._4layer`` repeat it with 4 layers;
- accuracy, on 4x4 Sudoku (prompt 16, gen 16) decoded in 4 blocks of 4 tokens (16 steps, greedy
  low-confidence), with the ``threshold`` benchmark's tiny Sudoku model (the shipped recipe trained
  for 400 SFT steps, 120 quick; it fills about 99 % of the blanks) and, prefixed ``shipped_``, the
  shipped base (about half). Accuracy is the fraction of blanks right.

Figures:
- ``tokens_per_s_ratio``: tokens/s with the prefix cache / without, gen 256; goal >= 2.
- ``accuracy_drop_points``: 100 * (accuracy without - with the prefix cache), Sudoku in blocks; goal <= 1.
- ``dual_...``: the same with the dual cache.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dipod.language.config import ModelConfig
from dipod.language.models import build_model, build_tokenizer
from dipod.language.rollout import ExampleSource, encode_prompts
from dipod.language.sampler import generate
from dipod.language.tasks import get_task

try:
    from bench_rollout_batching import CONFIG as SUDOKU_CONFIG
    from bench_threshold import sudoku_model
except ImportError:  # imported as benchmarks.bench_prefix_cache
    from benchmarks.bench_rollout_batching import CONFIG as SUDOKU_CONFIG
    from benchmarks.bench_threshold import sudoku_model

MODES = ("none", "prefix", "dual")


def speed(*, quick: bool, n_layer: int, n_embd: int, repeats: int) -> dict[str, float]:
    """Tokens per CPU second of each cache mode at gen 256, prompt 128 (greedy low-confidence, equal NFE)."""
    batch, prompt_length, gen_length, block_length = 8, 128, 256, 32
    steps = 64 if quick else 256
    model_cfg = ModelConfig(max_seq_len=prompt_length + gen_length, n_layer=n_layer, n_embd=n_embd)
    tok = build_tokenizer(model_cfg)
    model = build_model(model_cfg, tokenizer=tok, generator=torch.Generator().manual_seed(0)).eval()
    digits = torch.tensor(tok.encode("0123456789"))
    prompt = digits[torch.randint(len(digits), (batch, prompt_length), generator=torch.Generator().manual_seed(1))]
    kw = dict(mask_id=tok.mask_token_id, eos_id=tok.eos_token_id, gen_length=gen_length, block_length=block_length)

    def decode(mode: str):
        return generate(model, prompt, steps=steps, kv_cache=mode, generator=None, **kw)

    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    outs = {}
    for mode in MODES:
        decode(mode)  # warm-up
    for _ in range(repeats):
        for mode in MODES:
            start = time.process_time()
            outs[mode] = decode(mode)
            times[mode].append(time.process_time() - start)
    if len({out.nfe for out in outs.values()}) != 1:
        raise RuntimeError("the cache modes made different numbers of forward passes")
    best = {mode: min(t) for mode, t in times.items()}
    return {
        "tokens_per_cpu_s": batch * gen_length / best["none"],
        "prefix_tokens_per_cpu_s": batch * gen_length / best["prefix"],
        "dual_tokens_per_cpu_s": batch * gen_length / best["dual"],
        "prefix_tokens_identical": float((outs["prefix"].completion == outs["none"].completion).float().mean()),
        "dual_tokens_identical": float((outs["dual"].completion == outs["none"].completion).float().mean()),
    }


def sudoku_accuracy(model, tok, examples) -> dict[str, np.ndarray]:
    """Per-puzzle accuracy (N,) of each cache mode, Sudoku decoded in 4 blocks of 4 tokens."""
    task = get_task("sudoku")
    ids, attn = encode_prompts(tok, [task.prompt(ex, "compact") for ex in examples], "cpu")
    kw = dict(mask_id=tok.mask_token_id, eos_id=tok.eos_token_id, gen_length=16, block_length=4, steps=16)
    accuracy = {}
    for mode in MODES:
        out = generate(model, ids, attention_mask=attn, kv_cache=mode, generator=None, **kw)
        accuracy[mode] = task.score(tok.batch_decode(out.completion), examples, "compact")[1]
    return accuracy


def accuracy_figures(accuracy: dict[str, np.ndarray]) -> dict[str, float]:
    figures = {"accuracy_exact": float(accuracy["none"].mean())}
    for mode in ("prefix", "dual"):
        drop = 100 * (accuracy["none"] - accuracy[mode])  # (N,) paired
        name = "" if mode == "prefix" else "dual_"
        figures[f"{name}accuracy_drop_points"] = float(drop.mean())
        figures[f"{name}accuracy_drop_points_se"] = float(drop.std(ddof=1) / np.sqrt(len(drop)))
        figures[f"{mode}_accuracy"] = float(accuracy[mode].mean())
    return figures


def run(quick: bool) -> dict:
    with torch.inference_mode():
        figures: dict[str, float] = {}
        small = speed(quick=quick, n_layer=2, n_embd=128, repeats=2 if quick else 3)
        figures["tokens_per_s_ratio"] = small["prefix_tokens_per_cpu_s"] / small["tokens_per_cpu_s"]
        figures["dual_tokens_per_s_ratio"] = small["dual_tokens_per_cpu_s"] / small["tokens_per_cpu_s"]
        figures.update(small)
        if not quick:
            wide = speed(quick=quick, n_layer=4, n_embd=128, repeats=2)
            figures["tokens_per_s_ratio_4layer"] = wide["prefix_tokens_per_cpu_s"] / wide["tokens_per_cpu_s"]
            figures["dual_tokens_per_s_ratio_4layer"] = wide["dual_tokens_per_cpu_s"] / wide["tokens_per_cpu_s"]

        sft_steps = 120 if quick else 400
        with torch.inference_mode(False):
            trained, tok, cfg = sudoku_model(sft_steps)
        task = get_task("sudoku")
        data = cfg.language.data.model_copy(update={"eval_size": 256 if quick else 1024, "eval_seed": 4321})
        examples = ExampleSource(task, data).eval_examples
        figures.update(accuracy_figures(sudoku_accuracy(trained, tok, examples)))
        shipped_cfg = ModelConfig(**SUDOKU_CONFIG["language"]["model"])
        shipped = build_model(shipped_cfg, tokenizer=build_tokenizer(shipped_cfg)).eval()
        figures.update(
            {f"shipped_{k}": v for k, v in accuracy_figures(sudoku_accuracy(shipped, tok, examples)).items()}
        )
    return {
        "figures": figures,
        "reference": (
            "the same block-wise decoding without the cache (exact). Speed: default tiny model (2 layers, d=128; "
            "4 layers for *_4layer), fresh weights, batch 8, prompt 128, gen 256, block 32, "
            f"{64 if quick else 256} steps, greedy low-confidence, least CPU time of interleaved runs. Accuracy: "
            f"{len(examples)} generated 4x4 Sudoku puzzles in 4 blocks of 4 tokens, 16 greedy low-confidence steps, "
            f"tiny Sudoku model trained {sft_steps} SFT steps with the shipped recipe (shipped_*: the shipped base)"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
