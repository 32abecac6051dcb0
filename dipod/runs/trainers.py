"""Pick the trainer for a run config by its domain (imported lazily: a control run never loads transformers)."""

from __future__ import annotations

from dipod.runs.config import RunConfig
from dipod.types import Trainer


def build_trainer(cfg: RunConfig, device: str | None = None) -> Trainer:
    """A LanguageTrainer or ControlTrainer for ``cfg``, on ``device`` (default: ``cfg.train.device``)."""
    device = device or cfg.train.device
    if cfg.domain == "language":
        from dipod.language.trainer import LanguageTrainer

        return LanguageTrainer(cfg, device=device)
    from dipod.control.trainer import ControlTrainer

    return ControlTrainer(cfg, device=device)
