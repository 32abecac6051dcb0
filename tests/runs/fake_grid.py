"""Train a grid of fake runs in a process pool (for signal tests): ``fake_grid.py OUT_DIR RUNS STEPS``.

The fake trainer replaces ``build_trainer`` at import, so the pool's spawned workers, which import this module
as their main, train it too. Prints each run's status as JSON when the grid returns. FAKE_DELAY_S slows each step.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import dipod.runs.trainers
from tests.runs.fake_trainer import FakeTrainer, fake_config


def _build(cfg, device=None):
    return FakeTrainer(cfg, delay_s=float(os.environ.get("FAKE_DELAY_S", "0")))


dipod.runs.trainers.build_trainer = _build

if __name__ == "__main__":
    from dipod.runs.grid import GridRun, run_grid

    out, count, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    runs = [GridRun(f"run{i}", fake_config(steps=steps), out / f"run{i}") for i in range(count)]
    infos = run_grid(runs, jobs=2, quiet=True)
    print(json.dumps([info["status"] for info in infos]))
