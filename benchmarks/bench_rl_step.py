"""Where a language RL step spends its time, and what the fast path saves: rollout, scoring, updates.

Two set-ups of the real ``LanguageTrainer`` (FPO + DiPOD, mu = 4, K = 4):
- ``sudoku``: the shipped tiny Sudoku config (64 completions of L = 16, the SFT base, a 24-token vocabulary);
- ``long``: a longer-completion config with a realistic head width: a fresh tiny model (2 x 128) whose
  character vocabulary is widened to 32,768 entries (printable ASCII plus CJK ideographs the text never
  uses, so only the output head grows), Sudoku prompts in the d1 format (~300 tokens with the chat-less
  instruction), gen 128 in blocks of 32, 64 fixed decoding steps, 8 completions per step.
Each trainer step is split by the trainer itself into ``time/rollout`` (sampling and rewards), ``time/score``
(stored draws, old scores) and ``time/update`` (the mu inner updates). The fast path on ``long`` is today's
lean scoring (``language.score_logits: masked``, the default) and the prefix KV cache
(``sampler.kv_cache: prefix``), against the reference path (``score_logits: all``, no cache) of the same
config, interleaved. Threshold decoding and continuous batching are not in the fast path here: on a freshly
initialised model no token reaches a confidence threshold, so they would only add steps (their gain on a
trained model is the ``rollout_batching`` benchmark's).
"""

from __future__ import annotations

import statistics
import string
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/language/sudoku_fpo_dipod.yaml"
WIDE = (
    string.digits + string.ascii_letters + string.punctuation + " \n" + "".join(chr(0x4E00 + i) for i in range(32668))
)
LONG = [
    "language.model.path=null", "language.model.max_seq_len=512",
    "language.model.n_layer=2", "language.model.n_embd=128", "language.data.prompt_format=d1",
    "language.sampler.gen_length=128", "language.sampler.block_length=32", "language.sampler.steps=64",
    "language.prompts_per_step=2", "language.group_size=4", "language.data.eval_size=8",
    "language.eval_batch_size=8",
]  # fmt: skip
FAST = ["language.score_logits=masked", "language.sampler.kv_cache=prefix"]
REFERENCE = ["language.score_logits=all", "language.sampler.kv_cache=none"]
KEYS = ("time/rollout", "time/score", "time/update")


def _trainer(overrides: list[str], *, wide: bool = False):
    from dipod.language.trainer import LanguageTrainer
    from dipod.runs.config import load_config

    cfg = load_config(CONFIG, overrides)
    if wide:
        cfg.language.model.charset = WIDE  # 32,768 entries: too long for a --set
    return LanguageTrainer(cfg)


def _steps(trainers: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of each part of a step per trainer, steps interleaved round-robin after one warm-up."""
    times: dict[str, dict[str, list[float]]] = {name: {k: [] for k in (*KEYS, "step")} for name in trainers}
    for trainer in trainers.values():
        trainer.train_step()
    for _ in range(repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            metrics = trainer.train_step()
            times[name]["step"].append(time.perf_counter() - start)
            for key in KEYS:
                times[name][key].append(metrics[key])
    return {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in times.items()}


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    repeats = 2 if quick else 4
    sudoku = _steps({"sudoku": _trainer([])}, repeats)["sudoku"]
    long = _steps(
        {"reference": _trainer(LONG + REFERENCE, wide=True), "fast": _trainer(LONG + FAST, wide=True)}, repeats
    )
    ref, fast = long["reference"], long["fast"]
    figures = {
        **{f"sudoku_share_{k.split('/')[1]}": sudoku[k] / sudoku["step"] for k in KEYS},
        **{f"long_share_{k.split('/')[1]}": ref[k] / ref["step"] for k in KEYS},
        **{f"long_fast_share_{k.split('/')[1]}": fast[k] / fast["step"] for k in KEYS},
        "rollout_speedup": ref["time/rollout"] / fast["time/rollout"],
        "score_speedup": ref["time/score"] / fast["time/score"],
        "update_speedup": ref["time/update"] / fast["time/update"],
        "speedup": ref["step"] / fast["step"],
        "long_reference_step_s": ref["step"],
    }
    return {
        "figures": figures,
        "reference": "the long config's reference path (full-vocabulary logits at every position, no KV cache), "
        f"same trainer settings, steps interleaved, medians of {repeats}; shares are parts of a whole step",
    }


if __name__ == "__main__":
    print(run(quick=True))
