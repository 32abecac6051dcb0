"""Where a language RL step spends its time, and what the fast path saves: rollout, scoring, updates.

Two set-ups of the real ``LanguageTrainer`` (FPO + DiPOD, mu = 4, K = 4):
- ``sudoku``: the shipped tiny Sudoku config (64 completions of L = 16, the SFT base, a 24-token vocabulary);
- ``long``: a longer-completion config with a realistic head width: a tiny model (2 x 128) whose
  character vocabulary is widened to 32,768 entries (printable ASCII plus CJK ideographs the text never
  uses, so only the output head grows), Sudoku prompts in the d1 format (~300 tokens with the chat-less
  instruction), gen 128 in blocks of 32, 64 fixed decoding steps, 8 completions per step.
Each trainer step is split by the trainer itself into ``time/rollout`` (sampling and rewards), ``time/score``
(stored draws, old scores) and ``time/update`` (the mu inner updates). The fast path on ``long`` is today's
lean scoring (``language.score_logits: masked``, the default) and the prefix KV cache
(``sampler.kv_cache: prefix``), against the reference path (``score_logits: all``, no cache) of the same
config, interleaved, from the long config's SFT base (``long_base``: a trained model decodes confidently, as
the models users fine-tune do), with threshold decoding (0.9) and continuous batching added to the fast path.
The ``fresh_*`` figures compare the same paths on a freshly initialised model without threshold decoding (on
such a model no token reaches a confidence threshold).
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
TRAINED_FAST = [
    *FAST,
    "language.sampler.remasking=threshold",
    "language.sampler.threshold=0.9",
    "language.sampler.slots=4",
]
BASE = ROOT / "benchmarks" / "cache" / "rl_step_long_base"
"""The long config's SFT base (git-ignored; built on first use, about 20 min on one core)."""
BASE_SFT = ["language.sft.steps=400", "language.sft.batch_size=16", "language.sft.warmup_steps=20",
            "language.sft.eval_every=0", "language.data.eval_size=8"]  # fmt: skip
REFERENCE = ["language.score_logits=all", "language.sampler.kv_cache=none"]
KEYS = ("time/rollout", "time/score", "time/update")
COUNTS = ("nfe_per_row",)


def _trainer(overrides: list[str], *, wide: bool = False):
    from dipod.language.trainer import LanguageTrainer
    from dipod.runs.config import load_config

    cfg = load_config(CONFIG, overrides)
    if wide:
        cfg.language.model.charset = WIDE  # 32,768 entries: too long for a --set
    return LanguageTrainer(cfg)


def long_base() -> Path:
    """The long config's model after masked-diffusion SFT on its task's reference completions (d1-format Sudoku:
    a templated reasoning line, the grid, EOS padding to 128), so that its decoding is as confident as a trained
    model's and threshold decoding has something to skip. Built once into ``BASE``."""
    if not (BASE / "model.safetensors").is_file():
        from dipod.runs.config import load_config
        from dipod.runs.sft import train_sft

        overrides = [o for o in LONG if not o.startswith(("language.prompts_per_step", "language.group_size"))]
        cfg = load_config(ROOT / "configs/language/sudoku_sft.yaml", [*overrides, *BASE_SFT])
        cfg.language.model.charset = WIDE
        train_sft(cfg, out_dir=BASE, resume="auto")
    return BASE


def _steps(trainers: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of each part of a step per trainer, steps interleaved round-robin after one warm-up."""
    times: dict[str, dict[str, list[float]]] = {name: {k: [] for k in (*KEYS, *COUNTS, "step")} for name in trainers}
    for trainer in trainers.values():
        trainer.train_step()
    for _ in range(repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            metrics = trainer.train_step()
            times[name]["step"].append(time.perf_counter() - start)
            for key in (*KEYS, *COUNTS):
                times[name][key].append(metrics[key])
    return {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in times.items()}


def _speedups(ref: dict[str, float], fast: dict[str, float]) -> dict[str, float]:
    return {
        "rollout_speedup": ref["time/rollout"] / fast["time/rollout"],
        "score_speedup": ref["time/score"] / fast["time/score"],
        "update_speedup": ref["time/update"] / fast["time/update"],
        "speedup": ref["step"] / fast["step"],
        "nfe_per_row_reduction": ref["nfe_per_row"] / fast["nfe_per_row"],
    }


def _shares(prefix: str, parts: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_share_{k.split('/')[1]}": parts[k] / parts["step"] for k in KEYS}


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    repeats = 2 if quick else 4
    sudoku = _steps({"sudoku": _trainer([])}, repeats)["sudoku"]
    base = [f"language.model.path={long_base()}"]
    trained = _steps({"reference": _trainer(LONG + REFERENCE + base, wide=True),
                      "fast": _trainer(LONG + TRAINED_FAST + base, wide=True)}, repeats)  # fmt: skip
    fresh = _steps(
        {"reference": _trainer(LONG + REFERENCE, wide=True), "fast": _trainer(LONG + FAST, wide=True)}, repeats
    )
    figures = {
        **_speedups(trained["reference"], trained["fast"]),
        **_shares("sudoku", sudoku),
        **_shares("long", trained["reference"]),
        **_shares("long_fast", trained["fast"]),
        "long_reference_step_s": trained["reference"]["step"],
        **{f"fresh_{k}": v for k, v in _speedups(fresh["reference"], fresh["fast"]).items()},
    }
    return {
        "figures": figures,
        "reference": "the long config's reference path (fixed 64-step low-confidence decoding, full-vocabulary logits "
        "at every position, no KV cache) against the fast path (threshold 0.9 decoding with continuous batching in "
        "4 slots, prefix KV cache, logits only at scored tokens), both from the long config's SFT base "
        "(benchmarks/cache, built on first use); fresh_*: the same paths on a freshly initialised model, without "
        f"threshold decoding; same trainer settings, steps interleaved, medians of {repeats}; shares are parts of a "
        "whole step",
    }


if __name__ == "__main__":
    print(run(quick=True))
