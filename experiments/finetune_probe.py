"""How loose the bound is on a policy's own actions, measured after the fact from checkpoints: the behaviour-cloned
policy each fine-tuning run starts from, and each run's final policy.

For every checkpoint: roll the policy out in ``--envs`` environments (its own flow noise, observations through
its own normaliser) and take every state of the last ``--steps`` of ``--warmup + --steps`` steps, i.e.
envs x steps states of its own state distribution with its own fresh actions; then ``bound_gap``: mean exact
Euler log-likelihood, weighted flow ELBO (16 stratified draws) and their gap, over the rows whose Euler step
maps invert with plausible noise (their share is reported). The same environment seeds and generator serve
every checkpoint, so clone and fine-tuned policies are compared on like terms.

It also runs the self-distillation stage alone from the clone (the fine-tuning config's stage, one RL
iteration after it, per seed) and reports the stage's own measurement: the gap on the clone's samples before
the stage and on the student's fresh samples at the same states after it (``self_distill/gap_*``).

    PYTHONPATH=. python experiments/finetune_probe.py hopper_finetune walker2d_finetune
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fpo_pp", "fpo_pp_selfdistill", "fpo_pp_dipod", "fpo_pp_selfdistill_dipod")


def own_sample_gap(checkpoint: Path, *, envs: int, warmup: int, steps: int, seed: int) -> dict[str, float]:
    """``bound_gap`` of a checkpoint's policy on envs x steps of its own (state, action) pairs."""
    import gymnasium as gym

    from dipod.control.experts import load_run_actor
    from dipod.control.probe import bound_gap

    loaded = load_run_actor(checkpoint)
    actor, norm = loaded.actor, loaded.normalizer
    vec = gym.make_vec(loaded.env, num_envs=envs, vectorization_mode="sync")
    obs, _ = vec.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    low, high = vec.single_action_space.low, vec.single_action_space.high
    kept_obs, kept_actions = [], []
    with torch.no_grad():
        for t in range(warmup + steps):
            x = torch.as_tensor(obs, dtype=torch.float32)
            x = norm(x) if norm is not None else x
            actions = actor.sample(x, generator)  # (E, A) env units
            if t >= warmup:
                kept_obs.append(x)
                kept_actions.append(actions)
            obs, *_ = vec.step(np.clip(actions.numpy(), low, high))
    vec.close()
    return bound_gap(actor, torch.cat(kept_obs), torch.cat(kept_actions), 16, torch.Generator().manual_seed(seed + 1))


def stage_gaps(env: str, seed: int) -> dict[str, float]:
    """The self-distillation stage of ``configs/control/<env>_finetune.yaml`` alone: its gap before and after."""
    import tempfile

    from dipod.runs import run_training
    from dipod.runs.config import load_config
    from dipod.runs.metrics import read_metrics
    from dipod.runs.trainers import build_trainer

    overrides = ["control.self_distill_iterations=100", "train.steps=1", f"seed={seed}", "drift.every=0",
                 "train.eval_at_start=false", "control.eval_episodes=1"]  # fmt: skip
    cfg = load_config(ROOT / "configs" / "control" / f"{env}_finetune.yaml", overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        run_training(cfg, run_dir, trainer_factory=build_trainer, quiet=True)
        row = read_metrics(Path(run_dir) / "metrics.jsonl")[0]
    return {k.removeprefix("self_distill/"): v for k, v in row.items() if k.startswith("self_distill/")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="+", help="spec names, e.g. hopper_finetune")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.experiments:
        env = name.split("_")[0]
        runs = ROOT / "experiments" / "runs" / name
        results: dict[str, dict[str, float]] = {}
        clone = ROOT / "experiments" / "runs" / "pretrain" / f"{env}_bc"
        kwargs = {"envs": args.envs, "warmup": args.warmup, "steps": args.steps}
        for seed in (0, 1, 2):
            results[f"clone-seed{seed}"] = own_sample_gap(clone, seed=seed, **kwargs)
        for run_dir in sorted(runs.glob("*-seed*")):
            summary = run_dir / "summary.json"
            if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
                seed = int(run_dir.name.rsplit("seed", 1)[1])
                results[run_dir.name] = own_sample_gap(run_dir, seed=seed, **kwargs)
        for seed in (0, 1, 2):
            results[f"stage-seed{seed}"] = stage_gaps(env, seed)
        out = ROOT / "experiments" / "results" / name / "own_sample_gap.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: own-sample gap, {args.envs} x {args.steps} states per policy (written to {out}):\n")
        print("| policy | seeds | log-likelihood | weighted ELBO | gap (nats) | invertible share |")
        print("|---|---|---|---|---|---|")
        for group in ("clone", *VARIANTS):
            rows = [v for k, v in results.items() if k.rsplit("-seed", 1)[0] == group]
            if rows:
                cells = [
                    f"{statistics.mean(r[key] for r in rows):.2f} ± {statistics.stdev(r[key] for r in rows):.2f}"
                    if len(rows) > 1 else f"{rows[0][key]:.2f}"
                    for key in ("loglik", "elbo", "gap", "invertible_frac")
                ]  # fmt: skip
                print(f"| {group} | {len(rows)} | " + " | ".join(cells) + " |")
        stage = [v for k, v in results.items() if k.startswith("stage-")]
        before, after = [r["gap_before"] for r in stage], [r["gap_after"] for r in stage]
        per_seed = ", ".join(f"{b:.2f} → {a:.2f}" for b, a in zip(before, after, strict=True))
        print(f"\nself-distillation stage alone (3 seeds): gap {statistics.mean(before):.2f} ± "
              f"{statistics.stdev(before):.2f} before, {statistics.mean(after):.2f} ± {statistics.stdev(after):.2f} "
              f"after; per seed {per_seed}")  # fmt: skip
        print()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
