"""Shared builders for the language tests: a tiny fresh model on generated Sudoku, sized for CPU seconds."""

from __future__ import annotations

from typing import Any

from dipod.config import merge as config_merge
from dipod.runs.config import RunConfig, validate_config

TINY: dict[str, Any] = {
    "domain": "language",
    "seed": 3,
    "objective": {"name": "fpo", "dipod_beta": 0.05, "clip_low": 0.5, "clip_high": 0.5},
    "optim": {"lr": 1e-3, "max_grad_norm": 1.0},
    "train": {"steps": 2},
    "language": {
        "task": "sudoku",
        "group_size": 4,
        "prompts_per_step": 2,
        "num_iterations": 2,
        "elbo_draws": 2,
        "model": {"kind": "tiny", "charset": "0123456789", "n_layer": 1, "n_head": 2, "n_embd": 32, "max_seq_len": 32},
        "sampler": {"gen_length": 16, "block_length": 8, "steps": 4, "temperature": 1.0, "stop_at_eos": False},
        "data": {"eval_size": 8, "sudoku_min_blanks": 6, "sudoku_max_blanks": 10},
        "sft": {"steps": 30, "batch_size": 32, "lr": 3e-3, "warmup_steps": 0},
        "spg_block_length": 8,
    },
}


merge = config_merge
"""The layered-config merge: sections merge, and an ``objective`` naming another method replaces the base's."""


def tiny_config(**sections: Any) -> RunConfig:
    """The tiny Sudoku config with nested overrides, e.g. tiny_config(objective={"name": "spg"}).

    Another objective starts from DiPOD's weight alone (plus the clips where it has them): each objective
    accepts only its own settings.
    """
    base = TINY
    name = sections.get("objective", {}).get("name", "fpo")
    if name != "fpo":
        clips = {"clip_low": 0.5, "clip_high": 0.5} if name == "diffu_grpo" else {}
        base = {**TINY, "objective": {"name": name, "dipod_beta": 0.05, **clips}}
    return validate_config(merge(base, sections))
