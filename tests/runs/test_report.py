"""dipod report: grouping by variant and seed, PNG plots, markdown table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dipod.diagnostics.plots import mean_std_over_runs
from dipod.objectives import make_params
from dipod.runs import run_training
from dipod.runs.report import RunRecord, load_run, split_by_settings, write_report
from tests.runs.fake_trainer import FakeTrainer, fake_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _runs(tmp_path):
    dirs = []
    for beta in (0.0, 0.05):
        for seed in (0, 1):
            cfg = fake_config(steps=4)
            cfg.seed, cfg.objective.dipod_beta = seed, beta
            cfg.objective = make_params("control", "fpo_pp", dipod_beta=cfg.objective.dipod_beta)
            cfg.drift.every = 2
            run_dir = tmp_path / f"b{beta}-s{seed}"
            run_training(cfg, run_dir, trainer_factory=FakeTrainer, quiet=True)
            dirs.append(run_dir)
    return dirs


def test_report_files_and_table(tmp_path):
    dirs = _runs(tmp_path)
    files = write_report(dirs, tmp_path / "report")
    pngs = [f for f in files if f.suffix == ".png"]
    assert {p.name for p in pngs} == {
        "control_pendulum_v1_reward_mean.png",
        "control_pendulum_v1_elbo_mean.png",
        "control_pendulum_v1_drift_gap.png",
        "control_pendulum_v1_drift_grad_cosine.png",
    }
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| FPO++ | 2 (0, 1) |" in md and "| FPO++ + DiPOD (β=0.05) | 2 (0, 1) |" in md
    for png in pngs:
        assert f"]({png.name})" in md
    # The table's numbers are the mean +- sample std of each seed's final reward.
    finals = [load_run(d).final("reward_mean") for d in dirs[:2]]
    assert f"{np.mean(finals):.3f} ± {np.std(finals, ddof=1):.3f}" in md
    numbers = json.loads((tmp_path / "report" / "report.json").read_text())
    assert numbers["control-Pendulum-v1"]["FPO++"]["final reward"] == finals


def test_mean_std_over_runs_aligns_on_common_range():
    a = (np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 3.0]))
    b = (np.array([1.0, 3.0]), np.array([3.0, 5.0]))
    grid, mean, std = mean_std_over_runs([a, b])
    np.testing.assert_allclose(grid, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(mean, [(1 + 3) / 2, (2 + 4) / 2, (3 + 5) / 2])
    np.testing.assert_allclose(std, [1.0, 1.0, 1.0])


def test_runs_with_one_label_but_other_settings_are_separate_variants():
    def record(seed: int, lr: float, extra: dict | None = None) -> RunRecord:
        config = {"domain": "language", "seed": seed, "name": f"r{seed}", "optim": {"lr": lr, **(extra or {})}}
        return RunRecord(Path(f"r{seed}-{lr}"), config, [])

    runs = [record(0, 1e-5), record(1, 1e-5), record(0, 1e-4, {"new_key": 1})]  # an older config lacks new_key
    groups = split_by_settings("FPO", runs)
    assert {k: [r.config["seed"] for r in v] for k, v in groups.items()} == {
        "FPO, optim.lr=1e-05": [0, 1],
        "FPO, optim.lr=0.0001": [0],
    }
    assert list(split_by_settings("FPO", runs[:2])) == ["FPO"]  # seeds alone differ: one variant
