"""Threshold decoding with continuous batching vs fixed-step decoding per batch, on tiny Sudoku models.

A batch decoded together waits for its slowest row, so threshold decoding's per-row NFE reduction
shrinks per batch (``threshold`` benchmark: 4x per puzzle, 1.26x per batch of 128). With continuous
batching (``generate_continuous``) a row that finishes frees its slot for the next waiting puzzle, so
the forward passes of the whole queue fall like the per-row NFE.

Two models (compact format, 16 digits -> 16 digits, one block):
- the ``threshold`` benchmark's (``bench_threshold.sudoku_model``: the shipped recipe trained longer,
  400 SFT steps, 120 quick), which solves most puzzles: the main figures, comparable with its 1.26x;
- the shipped base ``dipod/assets/checkpoints/sudoku_tiny`` (stopped early, about half the blanks
  right, rarely confident): the same figures prefixed ``shipped_``.
Greedy decoding of generated 4x4 puzzles (8-12 blanks), all of a queue:
- reference: fixed-step low-confidence remasking, 16 steps (one token per step), in batches of
  S puzzles: 16 forward passes per batch;
- candidate: threshold decoding with continuous batching, S rows at once.
The queue holds ``WAVES`` times S puzzles (1024 in 128 slots; 256 in 32 quick), so that the tail, the
passes after the queue has emptied, weighs the same in both.
The threshold is chosen on validation puzzles (another seed) as ``bench_threshold`` does: the lowest of
``THRESHOLDS`` whose accuracy drop there plus two standard errors (of the mean paired per-puzzle
difference) is at most 2 points. The shipped base is stopped early (about half the blanks right) and is
rarely confident, so the grid reaches lower than ``bench_threshold``'s.

Figures (on the test puzzles):
- ``batched_nfe_reduction``: forward passes of the reference over the queue / of the candidate; goal >= 3.
- ``accuracy_drop_points``: 100 * (accuracy of the reference - of the candidate), accuracy = fraction of
  blanks right; goal <= 2 (negative: the candidate is more accurate).
- ``per_row_nfe_reduction``: the same ratio per puzzle (the most batching can reach without a tail).
- ``cpu_time_ratio``: CPU time of the reference / of the candidate over the queue (what the NFE buys on a CPU).
- ``batched_nfe_reduction@slots=S``: the same queue with other slot counts (fewer waves: more tail);
  ``...@rl_step``: a queue of one RL step of ``configs/language/sudoku_fpo.yaml`` (64 completions) in 16
  slots, its tail included.
- ``rollout_...``: the rollout setting (temperature 0.9, the RL config's): NFE reduction and the drop of
  the sampled completions' mean accuracy (the two decoders draw different noise: a noisy difference).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dipod.language.continuous import generate_continuous
from dipod.language.models import build_model, build_tokenizer
from dipod.language.rollout import ExampleSource, encode_prompts
from dipod.language.sampler import generate
from dipod.language.tasks import get_task
from dipod.runs.config import validate_config

try:
    from bench_threshold import sudoku_model
except ImportError:  # imported as benchmarks.bench_rollout_batching
    from benchmarks.bench_threshold import sudoku_model

CHECKPOINT = "dipod/assets/checkpoints/sudoku_tiny"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
ACCURACY_BUDGET_POINTS = 2.0
WAVES = 8
"""Puzzles in the queue / slots."""
FORMAT = "compact"
CONFIG = {
    "domain": "language",
    "name": "rollout_batching",
    "language": {
        "task": "sudoku",
        "model": {"kind": "tiny", "path": CHECKPOINT},
        "sampler": {"gen_length": 16, "block_length": 16, "steps": 16, "stop_at_eos": False},
        "data": {"prompt_format": FORMAT, "sudoku_min_blanks": 8, "sudoku_max_blanks": 12},
    },
}
"""The shipped base's settings (configs/language/sudoku_sft.yaml, sudoku_fpo.yaml)."""


class Queue:
    """Encoded puzzles and their examples."""

    def __init__(self, tok, task, examples) -> None:
        self.examples = examples
        self.ids, self.attn = encode_prompts(tok, [task.prompt(ex, FORMAT) for ex in examples], "cpu")

    def __len__(self) -> int:
        return len(self.examples)


def decode_fixed(model, tok, task, q: Queue, *, slots: int, temperature: float = 0.0, seed: int = 0) -> dict:
    """Fixed-step low-confidence decoding in batches of ``slots``: accuracy (N,), row NFE (N,), NFE, CPU s."""
    g = torch.Generator().manual_seed(seed) if temperature > 0 else None
    kw = dict(mask_id=tok.mask_token_id, eos_id=tok.eos_token_id, gen_length=16, block_length=16, steps=16)
    start = time.process_time()
    outs = [
        generate(
            model,
            q.ids[i : i + slots],
            attention_mask=q.attn[i : i + slots],
            temperature=temperature,
            generator=g,
            **kw,
        )
        for i in range(0, len(q), slots)
    ]
    seconds = time.process_time() - start
    completion = torch.cat([o.completion for o in outs])
    _, acc = task.score(tok.batch_decode(completion), q.examples, FORMAT)
    row_nfe = torch.cat([o.row_nfe for o in outs]).numpy()
    return {"accuracy": acc, "row_nfe": row_nfe, "nfe": sum(o.nfe for o in outs), "seconds": seconds}


def decode_continuous(
    model, tok, task, q: Queue, *, slots: int, threshold: float, temperature: float = 0.0, seed: int = 0
) -> dict:
    """Threshold decoding of the whole queue with continuous batching; same keys as ``decode_fixed``."""
    g = torch.Generator().manual_seed(seed) if temperature > 0 else None
    start = time.process_time()
    out = generate_continuous(
        model, q.ids, attention_mask=q.attn, mask_id=tok.mask_token_id, eos_id=tok.eos_token_id, gen_length=16,
        block_length=16, slots=slots, remasking="threshold", threshold=threshold, temperature=temperature, generator=g,
    )  # fmt: skip
    seconds = time.process_time() - start
    _, acc = task.score(tok.batch_decode(out.completion), q.examples, FORMAT)
    return {"accuracy": acc, "row_nfe": out.row_nfe.numpy(), "nfe": out.nfe, "seconds": seconds}


def drop_points(fixed: dict, candidate: dict) -> tuple[float, float]:
    """Mean paired accuracy drop in points and its standard error."""
    drop = 100 * (fixed["accuracy"] - candidate["accuracy"])  # (N,)
    return float(drop.mean()), float(drop.std(ddof=1) / np.sqrt(len(drop)))


def run(quick: bool) -> dict:
    with torch.inference_mode():
        cfg = validate_config(CONFIG)
        lang = cfg.language
        tok = build_tokenizer(lang.model)
        task = get_task("sudoku")
        size = 256 if quick else 1024
        sft_steps = 120 if quick else 400

        def puzzles(seed: int, n: int) -> Queue:
            examples = ExampleSource(
                task, lang.data.model_copy(update={"eval_size": n, "eval_seed": seed})
            ).eval_examples
            return Queue(tok, task, examples)

        validation, test = puzzles(1234, size), puzzles(4321, size)
        with torch.inference_mode(False):
            trained, trained_tok, _ = sudoku_model(sft_steps)
        if trained_tok.id_to_token != tok.id_to_token:
            raise RuntimeError("the trained and shipped models should share the digit tokenizer")
        slots = size // WAVES
        figures = measure(trained, tok, task, validation, test, slots=slots, quick=quick)
        shipped = build_model(lang.model, tokenizer=tok).eval()
        shipped_figures = measure(shipped, tok, task, validation, test, slots=slots, quick=True)
        figures.update({f"shipped_{k}": v for k, v in shipped_figures.items()})
    return {
        "figures": figures,
        "reference": (
            f"fixed-step low-confidence remasking (16 steps, one token each), greedy, in batches of {slots} puzzles, "
            f"vs threshold decoding with continuous batching in {slots} slots; tiny Sudoku model trained with the "
            f"shipped recipe for {sft_steps} SFT steps (shipped_*: {CHECKPOINT}); a queue of {len(test)} generated "
            f"4x4 test puzzles; threshold the lowest of {THRESHOLDS} within {ACCURACY_BUDGET_POINTS} points "
            f"(drop + 2 SE) on {len(validation)} validation puzzles"
        ),
    }


def measure(model, tok, task, validation: Queue, test: Queue, *, slots: int, quick: bool) -> dict[str, float]:
    """Choose the threshold on ``validation``, then the figures of the module docstring on ``test``."""
    fixed_val = decode_fixed(model, tok, task, validation, slots=slots)
    val_drops = {}
    for threshold in THRESHOLDS:
        val_drops[threshold] = drop_points(
            fixed_val, decode_continuous(model, tok, task, validation, slots=slots, threshold=threshold)
        )
    within = [t for t, (drop, se) in val_drops.items() if drop + 2 * se <= ACCURACY_BUDGET_POINTS]
    chosen = min(within) if within else max(THRESHOLDS)

    fixed = decode_fixed(model, tok, task, test, slots=slots)
    ours = decode_continuous(model, tok, task, test, slots=slots, threshold=chosen)
    drop, drop_se = drop_points(fixed, ours)
    figures = {
        "threshold": chosen,
        "batched_nfe_reduction": fixed["nfe"] / ours["nfe"],
        "accuracy_drop_points": drop,
        "accuracy_drop_points_se": drop_se,
        "per_row_nfe_reduction": float(fixed["row_nfe"].mean() / ours["row_nfe"].mean()),
        "cpu_time_ratio": fixed["seconds"] / ours["seconds"],
        "accuracy_fixed": float(fixed["accuracy"].mean()),
        "accuracy_continuous": float(ours["accuracy"].mean()),
        "nfe_fixed": fixed["nfe"],
        "nfe_continuous": ours["nfe"],
    }
    for other_slots in (64,) if quick else (16, 32, 64, 256):
        other = decode_continuous(model, tok, task, test, slots=other_slots, threshold=chosen)
        figures[f"batched_nfe_reduction@slots={other_slots}"] = len(test) / other_slots * 16 / other["nfe"]
    step = Queue(tok, task, test.examples[:64])  # one RL step: 8 prompts x 8 completions
    figures["batched_nfe_reduction@rl_step"] = (
        decode_fixed(model, tok, task, step, slots=16)["nfe"]
        / decode_continuous(model, tok, task, step, slots=16, threshold=chosen)["nfe"]
    )
    hot_fixed = decode_fixed(model, tok, task, test, slots=slots, temperature=0.9, seed=1)
    hot = decode_continuous(model, tok, task, test, slots=slots, threshold=chosen, temperature=0.9, seed=1)
    figures["rollout_batched_nfe_reduction"] = hot_fixed["nfe"] / hot["nfe"]
    figures["rollout_accuracy_drop_points"], figures["rollout_accuracy_drop_points_se"] = drop_points(hot_fixed, hot)
    for threshold, (d, se) in val_drops.items():
        figures[f"validation_accuracy_drop_points@{threshold}"] = d
        figures[f"validation_accuracy_drop_points_se@{threshold}"] = se
    return {k: float(v) for k, v in figures.items()}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
