"""Control throughput: env steps per second of the flow-policy trainer (8 Euler steps, FPO++) over Gaussian PPO.

Both trainers use the Pendulum config of the experiments (configs/control/pendulum_fpo_pp.yaml: 16 sync
envs x 64 steps, 10 epochs x 8 minibatches), so the ratio covers rollout and update. Steps are
interleaved (flow, Gaussian, flow, ...) so machine noise hits both alike. Also reports the share of a
self-distilled run's time spent in the self-distillation stage (pendulum_fpo_pp_selfdistill.yaml),
extrapolated from a few timed iterations of each phase.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dipod.runs.config import load_config
from dipod.control.trainer import ControlTrainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "control"


def _timed_steps(trainer: ControlTrainer) -> float:
    start = time.perf_counter()
    trainer.train_step()
    return time.perf_counter() - start


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    steps = 2 if quick else 8
    flow_cfg = load_config(CONFIGS / "pendulum_fpo_pp.yaml", ["control.sampling_steps=8"])
    gauss_cfg = load_config(
        CONFIGS / "pendulum_fpo_pp.yaml", ["control.policy=gaussian", "objective.name=fpo", "name=gaussian_ppo"]
    )
    flow, gauss = ControlTrainer(flow_cfg), ControlTrainer(gauss_cfg)
    flow.train_step(), gauss.train_step()  # warm-up
    flow_time = gauss_time = 0.0
    for _ in range(steps):
        flow_time += _timed_steps(flow)
        gauss_time += _timed_steps(gauss)
    env_steps = steps * flow_cfg.control.num_envs * flow_cfg.control.rollout_steps
    flow_sps, gauss_sps = env_steps / flow_time, env_steps / gauss_time
    flow.close(), gauss.close()

    # Self-distillation share: time a few stage iterations, extrapolate both phases to the config's length.
    sd_cfg = load_config(CONFIGS / "pendulum_fpo_pp_selfdistill.yaml")
    sd_iters = 5 if quick else 20
    probe_cfg = load_config(
        CONFIGS / "pendulum_fpo_pp_selfdistill.yaml", [f"control.self_distill_iterations={sd_iters}"]
    )
    sd = ControlTrainer(probe_cfg)
    sd._run_self_distill()
    per_sd_iter = sd.self_distill_time_s / sd_iters
    sd.close()
    sd_total = per_sd_iter * sd_cfg.control.self_distill_iterations
    rl_total = (flow_time / steps) * sd_cfg.train.steps
    return {
        "figures": {
            "flow_over_gaussian_steps_per_s": flow_sps / gauss_sps,
            "flow_steps_per_s": flow_sps,
            "gaussian_steps_per_s": gauss_sps,
            "self_distill_time_fraction": sd_total / (sd_total + rl_total),
        },
        "reference": (
            "Gaussian PPO on the same 16-env Pendulum-v1 vector env and update schedule, same run; "
            "self-distillation fraction = stage time / (stage + RL time) for pendulum_fpo_pp_selfdistill.yaml, "
            "extrapolated from timed iterations"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    quick = "--quick" in sys.argv
    result = {"name": "control_throughput", **run(quick), "quick": quick}
    out = Path(__file__).resolve().parent / "results" / "control_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
