"""Confidence-threshold parallel decoding vs fixed-step low-confidence remasking on a tiny Sudoku model.

Both decode the same fixed set of 4x4 Sudoku puzzles greedily (temperature 0) with the same model:
- reference: low-confidence remasking with one token per step (steps = gen_length), LLaDA's default;
- threshold: unmask every token whose confidence >= a threshold (at least one per step).
NFE is counted per puzzle (``SampleOut.row_nfe``: the forward passes the puzzle needs when decoded
alone), since a batch waits for its slowest row; the batched NFE ratio is reported too.

The model is a tiny Sudoku model trained here by ``dipod.language.sft`` (compact format, 16 puzzle
digits -> 16 solution digits) with the recipe of the shipped base ``configs/language/sudoku_sft.yaml``
but more steps (120 quick, 400 full), so that it solves most puzzles. The shipped base is stopped
early on purpose (about half the blanks right, room for RL); its confidences almost never reach a
threshold, so threshold decoding falls back to one token per step there (measured: 1.0x NFE).

The threshold is chosen on validation puzzles (another seed) as the lowest one of ``THRESHOLDS``
whose accuracy drop there plus two standard errors (of the mean paired per-puzzle difference) is at
most ``ACCURACY_BUDGET_POINTS``: with a few hundred puzzles the drop itself is too noisy to pick by.
The figures are measured at that threshold on separate test puzzles, and the whole grid is reported
on the test puzzles too (``...@THRESHOLD``).

Figures:
- ``threshold``: the operating point chosen on the validation puzzles.
- ``nfe_reduction``: mean per-puzzle NFE of fixed steps / of threshold decoding; goal >= 3.
- ``accuracy_drop_points``: 100 * (accuracy fixed - accuracy threshold), accuracy = fraction of blanks
  filled correctly; goal <= 2.
"""

from __future__ import annotations

import numpy as np
import torch

from dipod.language.rollout import ExampleSource, encode_prompts, sample
from dipod.language.tasks import get_task
from dipod.runs.config import validate_config
from dipod.runs.sft import train_sft

THRESHOLDS = (0.8, 0.9, 0.95, 0.97, 0.99)
"""The grid. Fast-dLLM uses 0.9 for LLaDA-8B (SamplerConfig's default); this tiny model is less calibrated."""
ACCURACY_BUDGET_POINTS = 2.0
"""The operating point is the lowest threshold of the grid whose accuracy drop on held-out validation
puzzles is within this budget (the goal's) with its two-standard-error margin, chosen before the test
puzzles are decoded."""
FORMAT = "compact"

SFT_CONFIG = {
    "domain": "language",
    "seed": 0,
    "name": "sudoku_sft",
    "optim": {"max_grad_norm": 1.0},
    "language": {
        "task": "sudoku",
        "model": {"kind": "tiny", "charset": "0123456789", "n_layer": 2, "n_head": 4, "n_embd": 128, "max_seq_len": 32},
        "sampler": {"gen_length": 16, "block_length": 16, "steps": 16, "stop_at_eos": False},
        "data": {"prompt_format": FORMAT, "sudoku_min_blanks": 8, "sudoku_max_blanks": 12, "eval_size": 16},
        "sft": {"steps": 60, "batch_size": 64, "lr": 1.0e-3, "warmup_steps": 10, "eval_every": 0},
    },
}
"""The SFT recipe of the shipped checkpoint (configs/language/sudoku_sft.yaml)."""


def sudoku_model(sft_steps: int):
    """(model, tokenizer, cfg): a tiny Sudoku model trained now with the shipped recipe for ``sft_steps`` steps."""
    data = {**SFT_CONFIG, "language": {**SFT_CONFIG["language"]}}
    data["language"]["sft"] = {**data["language"]["sft"], "steps": sft_steps}
    cfg = validate_config(data)
    model, tok, _ = train_sft(cfg)
    return model.eval(), tok, cfg


def decode(model, tok, task, examples, sampler_cfg, *, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per-puzzle accuracy (N,), per-puzzle NFE (N,), and the batched NFE of each batch."""
    accuracy, row_nfe, batch_nfe = [], [], []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompt_ids, prompt_attn = encode_prompts(tok, [task.prompt(ex, FORMAT) for ex in batch], "cpu")
        with torch.inference_mode():
            out = sample(model, prompt_ids, sampler_cfg, attention_mask=prompt_attn, generator=None)
        _, acc = task.score(tok.batch_decode(out.completion), batch, FORMAT)
        accuracy.append(acc)
        row_nfe.append(out.row_nfe.numpy())
        batch_nfe.append(out.nfe)
    return np.concatenate(accuracy), np.concatenate(row_nfe), batch_nfe


def sweep(model, tok, task, examples, fixed_cfg) -> tuple[dict[float, tuple[float, float, float]], dict]:
    """{threshold: (nfe_reduction, accuracy_drop_points, its standard error)} on ``examples``, and details."""
    acc_fixed, nfe_fixed, batch_fixed = decode(model, tok, task, examples, fixed_cfg, batch_size=128)
    fixed = {"accuracy": acc_fixed.mean(), "nfe": nfe_fixed.mean(), "batch_nfe": np.mean(batch_fixed)}
    results, details = {}, {"fixed": fixed}
    for threshold in THRESHOLDS:
        threshold_cfg = fixed_cfg.model_copy(update={"remasking": "threshold", "threshold": threshold})
        acc, nfe, batch_nfe = decode(model, tok, task, examples, threshold_cfg, batch_size=128)
        drop = 100 * (acc_fixed - acc)  # (N,) paired per-puzzle differences, in points
        results[threshold] = (nfe_fixed.mean() / nfe.mean(), drop.mean(), drop.std(ddof=1) / np.sqrt(len(drop)))
        details[threshold] = {"accuracy": acc.mean(), "nfe": nfe.mean(), "batch_nfe": np.mean(batch_nfe)}
    return results, details


def run(quick: bool) -> dict:
    sft_steps = 120 if quick else 400
    model, tok, cfg = sudoku_model(sft_steps)
    lang = cfg.language
    task = get_task("sudoku")
    gen_length = lang.sampler.gen_length
    fixed_cfg = lang.sampler.model_copy(
        update={"remasking": "low_confidence", "steps": gen_length, "block_length": gen_length, "temperature": 0.0}
    )
    size = 256 if quick else 1024
    validation = ExampleSource(task, lang.data.model_copy(update={"eval_size": size, "eval_seed": 1234})).eval_examples
    test = ExampleSource(task, lang.data.model_copy(update={"eval_size": size, "eval_seed": 4321})).eval_examples

    on_validation, _ = sweep(model, tok, task, validation, fixed_cfg)
    within = [t for t, (_, drop, se) in on_validation.items() if drop + 2 * se <= ACCURACY_BUDGET_POINTS]
    chosen = min(within) if within else max(THRESHOLDS)
    on_test, details = sweep(model, tok, task, test, fixed_cfg)
    reduction, drop, drop_se = on_test[chosen]
    figures = {
        "threshold": chosen,
        "nfe_reduction": float(reduction),
        "accuracy_drop_points": float(drop),
        "accuracy_drop_points_se": float(drop_se),
        "batched_nfe_reduction": float(details["fixed"]["batch_nfe"] / details[chosen]["batch_nfe"]),
        "accuracy_fixed": float(details["fixed"]["accuracy"]),
        "accuracy_threshold": float(details[chosen]["accuracy"]),
        "nfe_fixed": float(details["fixed"]["nfe"]),
        "nfe_threshold": float(details[chosen]["nfe"]),
    }
    for threshold, (reduction, drop, _) in on_test.items():
        figures[f"nfe_reduction@{threshold}"] = float(reduction)
        figures[f"accuracy_drop_points@{threshold}"] = float(drop)
    for threshold, (_, drop, se) in on_validation.items():
        figures[f"validation_accuracy_drop_points@{threshold}"] = float(drop)
        figures[f"validation_accuracy_drop_points_se@{threshold}"] = float(se)
    return {
        "figures": figures,
        "reference": (
            f"low-confidence remasking, {gen_length} steps (one token per step), greedy, same tiny model "
            f"({sft_steps} SFT steps), {len(test)} generated 4x4 Sudoku test puzzles; threshold {chosen}, "
            f"the lowest of {THRESHOLDS} within {ACCURACY_BUDGET_POINTS} points (drop + 2 SE) on "
            f"{len(validation)} validation puzzles"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
