"""Run directories: resolved config, JSONL + TensorBoard metrics, atomic checkpoints, the one resumable run loop."""

from dipod.runs.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from dipod.runs.config import RunConfig, load_config, validate_config
from dipod.runs.hooks import Hook, StatelessHook
from dipod.runs.loop import BadStepsError, RunDirError, RunResult, open_trainer, run_training
from dipod.runs.trainers import build_trainer

__all__ = [
    "BadStepsError",
    "CheckpointError",
    "Hook",
    "RunConfig",
    "RunDirError",
    "RunResult",
    "StatelessHook",
    "build_trainer",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "open_trainer",
    "run_training",
    "save_checkpoint",
    "validate_config",
]
