"""The bound's gap on long completions, measured after the fact with many unmasking orders.

The drift probe during training uses a few orders (``drift.num_orders``, 8 in the release-regime specs); on
completions of 35 tokens its importance-weighted log-likelihood, and so the gap, swings from probe to probe. This
script re-measures it on each run's last checkpoint (and on the base every run starts from) with many orders: the
same prompts, and the same generator for sampling and for orders, for every policy, so policies are compared on
like terms. For each policy it samples G completions for each of ``--prompts`` training prompts (the rollout's own
code), draws ``--orders`` random orders per completion, and reports

- ``elbo``: the mean over orders of the any-order AR log-likelihood (per completion, nats),
- ``loglik@K``: the K-order importance-weighted bound on log pi, for K = 8, 32, ... up to ``--orders`` (the first
  K of the same orders), and ``gap@K`` = ``loglik@K`` - ``elbo``: a lower bound on the true gap, growing with K
  in expectation; how far it still moves from K/4 to K says how far it is from the true gap,
- ``tokens``: scored tokens per completion, ``reward``: the completions' mean reward.

    PYTHONPATH=. python experiments/long_gap.py sort_release --orders 128 --prompts 2
      [--variants fpo_no_reference release_fpo_dipod_lr1e-5 ...]

Writes ``experiments/results/NAME/long_gap.json`` (one entry per policy) and prints a table by variant.
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
RUNS = ROOT / "experiments" / "runs"
RESULTS = ROOT / "experiments" / "results"


def policy_gap(trainer, *, prompts: int, orders: int, seed: int) -> dict[str, float]:
    """Gap of ``trainer``'s policy on its own completions of ``prompts`` fixed prompts, at K = 8, 32, ... orders."""
    from dipod.bounds.masked import order_iw_loglik
    from dipod.language.probe import language_order_logliks

    examples = trainer.source.draw(prompts, np.random.default_rng(seed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        s = trainer.sample_groups(examples, generator)
        valid = s.decoded.valid  # (B, L)
        attention = torch.cat([s.prompt_attn, torch.ones_like(valid)], dim=1)  # (B, P + L)
        order_loglik, exact = language_order_logliks(
            trainer.model, s.prompt_ids, s.decoded.completion_ids, valid, mask_id=trainer.tokenizer.mask_token_id,
            num_orders=orders, generator=generator, attention_mask=attention, max_rows=trainer.cfg.drift.chunk_rows,
        )  # fmt: skip
        # order_loglik: (B, K)
    elbo = order_loglik.mean(dim=1)  # (B,)
    out = {"elbo": float(elbo.mean()), "tokens": float(valid.sum(1).float().mean()),
           "reward": float(s.rewards.mean()), "exact": float(exact), "completions": int(valid.shape[0])}  # fmt: skip
    ks = sorted({k for k in (8, 32, 128, 512) if k < order_loglik.shape[1]} | {order_loglik.shape[1]})
    for k in ks:
        loglik = order_iw_loglik(order_loglik[:, :k])  # (B,)
        out[f"loglik@{k}"] = float(loglik.mean())
        out[f"gap@{k}"] = float((loglik - elbo).mean())
    return out


def measure(run_dir: Path, *, base: bool, prompts: int, orders: int, seed: int) -> dict[str, float]:
    """``policy_gap`` of a run's last checkpoint, or of the base its config starts from (``base``)."""
    from dipod.checkpoints import latest_checkpoint
    from dipod.runs import open_trainer, trainers
    from dipod.runs.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    payload = None if base else latest_checkpoint(run_dir / "checkpoints")[1]
    trainer = open_trainer(cfg, trainers.build_trainer, payload, run_dir, restore_envs=False)
    try:
        return {"step": trainer.step, **policy_gap(trainer, prompts=prompts, orders=orders, seed=seed)}
    finally:
        trainer.close()


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that has ended (its last checkpoint is its final policy)."""
    summary = run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") in ("completed", "stopped")


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: mean ± std over seeds of each variant's figures."""
    variants: dict[str, list[dict[str, float]]] = {}
    for name, row in results.items():
        variants.setdefault(name.rsplit("-seed", 1)[0], []).append(row)
    keys = ["step", "reward", "tokens", "elbo"] + [k for k in next(iter(results.values())) if k.startswith("gap@")]
    lines = ["| policy | runs | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for variant, rows in variants.items():
        cells = []
        for key in keys:
            values = [r[key] for r in rows]
            mean = statistics.fmean(values)
            cells.append(f"{mean:.3g}" + (f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else ""))
        lines.append(f"| {variant} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="experiment name: its runs are experiments/runs/NAME/VARIANT-seedS")
    parser.add_argument("--variants", nargs="*", help="variants to measure (default: every finished one)")
    parser.add_argument("--orders", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234, help="prompts, completions and orders")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = sorted(p for p in (RUNS / args.name).iterdir() if finished(p))
    if args.variants:
        runs = [p for p in runs if p.name.rsplit("-seed", 1)[0] in args.variants]
    out = RESULTS / args.name / "long_gap.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    settings = {"orders": args.orders, "prompts": args.prompts, "seed": args.seed}
    jobs = [("base", runs[0], True)] + [(p.name, p, False) for p in runs]
    for name, run_dir, base in jobs:
        if results.get(name, {}).get("settings") == settings:
            continue  # measured already with these settings
        results[name] = {
            "settings": settings,
            **measure(run_dir, base=base, prompts=args.prompts, orders=args.orders, seed=args.seed),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(name, json.dumps(results[name]), flush=True)
    measured = {k: r for k, r in results.items() if r["settings"] == settings}  # others have other gap@K columns
    print(table({k: {n: v for n, v in r.items() if n != "settings"} for k, r in measured.items()}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
