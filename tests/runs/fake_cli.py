"""Run the dipod CLI with the fake trainer in place of build_trainer (for subprocess tests).

FAKE_DELAY_S slows each step; FAKE_NAN_FROM makes losses NaN from that step on.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import dipod.runs.trainers
from tests.runs.fake_trainer import FakeTrainer


def _build(cfg, device=None):
    nan_from = os.environ.get("FAKE_NAN_FROM")
    return FakeTrainer(
        cfg, delay_s=float(os.environ.get("FAKE_DELAY_S", "0")), nan_from=int(nan_from) if nan_from else None
    )


dipod.runs.trainers.build_trainer = _build

if __name__ == "__main__":
    from dipod.cli import main

    main()
