"""Capture and restore the process-wide random states (python, numpy, torch CPU and CUDA).

dipod's own code draws from explicit generators held by the trainers; the global states are saved
too so that third-party code that uses them (dropout in an HF model, a gymnasium wrapper) also
continues bit for bit after a resume.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def global_rng_state() -> dict[str, Any]:
    """The current global random states, as plain picklable values."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`global_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_globals(seed: int) -> None:
    """Seed the global states once at the start of a run (the run loop's job, never library code's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
