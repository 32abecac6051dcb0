"""Behaviour-cloning throughput: (obs, action) pairs per second of ``train_bc`` on Hopper-v5 demonstrations.

The demonstrations are recorded on the spot (a fixed linear expert with action noise; throughput does not
depend on their quality). ``train_samples_per_s`` is the whole BC run's pairs per second on the one loop
(its checkpoint and end-of-run evaluation included); the reference is a bare loop of the same steps (batch gather,
(tau, eps) draws, CFM forward + backward, AdamW) on the same data, timed in the same run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dipod.bounds.flow import draw_flow_noise
from dipod.control.demos import collect_demonstrations, load_demonstrations
from dipod.control.policy import FlowPolicy
from dipod.runs.config import validate_config
from dipod.runs.sft import train_bc

ENV = "Hopper-v5"


def _expert(obs: np.ndarray) -> np.ndarray:
    weights = np.random.default_rng(0).standard_normal((3, 11)) * 0.1
    return (weights @ obs).astype(np.float32)


def _bare_steps(data: Path, steps: int, batch: int, draws: int) -> float:
    demos = load_demonstrations(data)
    obs, actions = torch.from_numpy(demos.obs), torch.from_numpy(demos.actions)
    actor = FlowPolicy(11, 3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(actor.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        rows = torch.randint(obs.shape[0], (batch,), generator=gen)
        loss = actor.cfm_losses(obs[rows], actions[rows], draw_flow_noise(batch, draws, 3, generator=gen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    steps = 300 if quick else 2000
    batch, draws = 256, 4
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "hopper-linear-v0"
        collect_demonstrations(ENV, _expert, episodes=40, out=data, action_noise=0.2, seed=0)
        cfg = validate_config(
            {
                "domain": "control",
                "control": {
                    "env": ENV,
                    "bc": {"dataset": str(data), "steps": steps, "batch_size": batch, "cfm_draws": draws,
                           "val_every": 0, "eval_episodes": 1, "checkpoint_every": steps},
                },
                "train": {"log_every": steps},
            }
        )  # fmt: skip
        # The bare loop runs before and after train_bc and is averaged, so drifting machine load hits both.
        bare_before = _bare_steps(data, steps, batch, draws)
        result = train_bc(cfg, out_dir=Path(tmp) / "run")
        bare = 0.5 * (bare_before + _bare_steps(data, steps, batch, draws))
        bc_sps = result.summary["samples"] / result.summary["time_s"]  # the whole run: checkpoint, final evaluation
        pairs = load_demonstrations(data).actions.shape[0]
    return {
        "figures": {
            "train_samples_per_s": bc_sps,
            "bare_samples_per_s": bare,
            "over_bare": bc_sps / bare,
            "dataset_pairs": float(pairs),
        },
        "reference": (
            f"a bare CFM + AdamW loop of the same {steps} steps (batch {batch}, {draws} draws, actor 64x64) on "
            "the same Hopper-v5 pairs, same run (mean of one loop before and one after)"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    quick = "--quick" in sys.argv
    print(json.dumps({"name": "bc", **run(quick), "quick": quick}, indent=2))
