"""Run directories: resolved config, JSONL + TensorBoard metrics, atomic checkpoints, the resumable run loop."""

from dipod.runs.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from dipod.runs.loop import BadStepsError, RunResult, run_training

__all__ = [
    "BadStepsError",
    "CheckpointError",
    "RunResult",
    "latest_checkpoint",
    "load_checkpoint",
    "run_training",
    "save_checkpoint",
]
