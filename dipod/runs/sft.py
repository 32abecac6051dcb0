"""Supervised pre-training through the one run loop: ``dipod sft``'s run, and the model it leaves behind."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from dipod.language.config import LanguageRunConfig
from dipod.language.sft import SFTTrainer, sft_run_config
from dipod.runs.hooks import StatelessHook
from dipod.runs.loop import Resume, run_training
from dipod.runs.metrics import read_metrics
from dipod.types import Trainer


class ExportModel(StatelessHook):
    """After the last step, saves the trained model (adapters merged) and its tokenizer into ``out_dir``."""

    name = "export"

    def __init__(self, out_dir: Path, steps: int) -> None:
        self.out_dir, self.steps = out_dir, steps
        self.model: Any = None

    def after_step(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Export once the run has done its steps."""
        if trainer.step >= self.steps and isinstance(trainer, SFTTrainer):
            self.model = trainer.export(self.out_dir)


def train_sft(
    cfg: LanguageRunConfig,
    *,
    out_dir: str | Path | None = None,
    resume: Resume = "never",
    quiet: bool = True,
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Pre-train ``cfg``'s model on its task's reference completions; returns (model, tokenizer, metric rows).

    ``out_dir`` becomes a run directory (metrics.jsonl, checkpoints/, ...) that also holds the saved model and
    tokenizer, loadable as ``language.model.path``; None trains in a temporary directory. Rows have ``step``,
    ``loss`` (-ELBO per token), ``grad_norm`` and, at evaluation steps, ``eval/*``.
    """
    cfg = sft_run_config(cfg)
    built: list[SFTTrainer] = []

    def factory(run_cfg: LanguageRunConfig) -> SFTTrainer:
        built.append(SFTTrainer(run_cfg))
        return built[-1]

    with tempfile.TemporaryDirectory() if out_dir is None else contextlib.nullcontext(out_dir) as where:
        where = Path(where)
        export = ExportModel(where, cfg.train.steps)
        with torch.random.fork_rng(devices=[]):  # the loop seeds the global RNGs: keep the caller's as they were
            run_training(cfg, where, trainer_factory=factory, resume=resume, quiet=quiet, hooks=[export])
        rows = read_metrics(where / "metrics.jsonl")
    return export.model if export.model is not None else built[-1].model, built[-1].tokenizer, rows
