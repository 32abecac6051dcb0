"""The collapse alarm on real runs of the one loop: it flags (and with ``train.stop_on_collapse`` stops) a run
driven to collapse, and stays quiet on the shipped FPO + DiPOD config (CPU seconds, tiny Sudoku base)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dipod.runs import build_trainer, load_config, run_training

CONFIG = Path(__file__).resolve().parents[2] / "configs/language/sudoku_fpo_dipod.yaml"
SMALL = [
    "language.prompts_per_step=4", "language.group_size=4", "language.elbo_draws=2", "train.steps=16",
    "train.eval_every=0", "language.data.eval_size=16", "language.eval_batch_size=16", "train.checkpoint_every=100",
]  # fmt: skip


def _run(tmp_path: Path, overrides: list[str]):
    torch.set_num_threads(1)
    cfg = load_config(CONFIG, SMALL + overrides)
    return run_training(cfg, tmp_path, trainer_factory=build_trainer, quiet=True)


def test_shipped_config_stays_quiet(tmp_path):
    result = _run(tmp_path, [])
    assert result.status == "completed" and result.summary["health"]["collapsed"] is False
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(row["health/collapsed"] == 0.0 and 0 < row["health/token_nll"] < 5 for row in rows)


def test_release_reference_term_at_beta_minus_half_is_flagged_and_stopped(tmp_path):
    # kl_beta 0.5 on the ELBO difference is DiPOD with beta = -0.5 (tests/objectives/test_release_equivalence):
    # it pushes the bound, and with it the policy, down. Measured here: flagged at step 12 by elbo_shift.
    result = _run(tmp_path, ["objective.dipod_beta=0", "objective.kl_beta=0.5", "optim.lr=3e-4",
                             "train.stop_on_collapse=true"])  # fmt: skip
    health = result.summary["health"]
    assert result.status == "stopped" and health["collapsed"] and health["signals"]
    assert result.step == health["step"] < 16  # stopped at the alarm, after a checkpoint
    assert json.loads((tmp_path / "summary.json").read_text())["health"] == health
    assert (tmp_path / "checkpoints" / f"step_{result.step:08d}.pt").is_file()
