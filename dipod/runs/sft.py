"""Supervised pre-training through the one run loop: ``dipod sft``'s runs and the policies they leave behind.

Language: the masked-diffusion loss on a task's reference completions (``SFTTrainer``). Control: behaviour
cloning of a flow policy on demonstrations (``BCTrainer``), whose checkpoints an RL run starts from
(``control.init_from``).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dipod.control.config import ControlRunConfig
from dipod.language.config import LanguageRunConfig
from dipod.language.sft import SFTTrainer, sft_run_config
from dipod.runs.hooks import StatelessHook
from dipod.runs.loop import Resume, run_training
from dipod.runs.metrics import read_metrics
from dipod.types import Trainer

if TYPE_CHECKING:
    from dipod.control.bc import BCTrainer


class SFTInterrupted(Exception):
    """The SFT run stopped on a signal before its last step: checkpointed, nothing exported yet
    (``resume="always"`` continues it and exports at the end)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"supervised pre-training interrupted after step {step}; continue with --resume")
        self.step = step


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
    ``loss`` (-ELBO per token), ``grad_norm`` and, at evaluation steps, ``eval/*``. A run stopped by SIGINT or
    SIGTERM raises ``SFTInterrupted`` after its checkpoint.
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
            result = run_training(cfg, where, trainer_factory=factory, resume=resume, quiet=quiet, hooks=[export])
        if result.status == "interrupted":
            raise SFTInterrupted(result.step)
        rows = read_metrics(where / "metrics.jsonl")
    return export.model if export.model is not None else built[-1].model, built[-1].tokenizer, rows


@dataclass
class BCResult:
    """What ``train_bc`` leaves: the clone, its normaliser, the metric rows and the run directory."""

    actor: Any
    normalizer: Any
    rows: list[dict[str, Any]]
    run_dir: Path
    summary: dict[str, Any]


def train_bc(cfg: ControlRunConfig, *, out_dir: str | Path, resume: Resume = "never", quiet: bool = True) -> BCResult:
    """Clone ``cfg``'s demonstrations (``control.bc``) into a flow policy; ``out_dir`` becomes the run directory
    (metrics.jsonl with ``loss``, ``val/cfm_loss``, ``val/elbo``, ``eval/return``; checkpoints/ that
    ``control.init_from`` and ``load_pretrained_actor`` read)."""
    from dipod.control.bc import BCTrainer, bc_run_config  # gymnasium: the control extra, not needed for language

    cfg = bc_run_config(cfg)
    built: list[BCTrainer] = []

    def factory(run_cfg: ControlRunConfig) -> BCTrainer:
        built.append(BCTrainer(run_cfg))
        return built[-1]

    with torch.random.fork_rng(devices=[]):
        result = run_training(cfg, out_dir, trainer_factory=factory, resume=resume, quiet=quiet)
    trainer = built[-1]
    rows = read_metrics(Path(out_dir) / "metrics.jsonl")
    return BCResult(trainer.actor, trainer.normalizer, rows, Path(out_dir), result.summary)
