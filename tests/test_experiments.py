"""The experiment runner: a spec's variants x seeds train through the one loop and are summarised."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import run as experiments  # noqa: E402  (experiments/run.py)


def test_smoke_spec_runs_resumes_and_summarises(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(experiments, "RESULTS", tmp_path / "results")
    spec = ROOT / "experiments" / "specs" / "smoke.yaml"
    assert experiments.main([str(spec), "--jobs", "1"]) == 0
    summary = json.loads((tmp_path / "results" / "smoke" / "summary.json").read_text())
    assert set(summary["runs"]) == {"release_fpo-seed0", "release_fpo_dipod-seed0"}
    assert all(run["status"] == "completed" and run["step"] == 2 for run in summary["runs"].values())
    assert "collapsed (step)" in (tmp_path / "results" / "smoke" / "report.md").read_text()
    before = (tmp_path / "runs" / "smoke" / "release_fpo-seed0" / "metrics.jsonl").read_text()
    assert experiments.main([str(spec), "--jobs", "1"]) == 0  # finished runs are kept, not trained again
    assert (tmp_path / "runs" / "smoke" / "release_fpo-seed0" / "metrics.jsonl").read_text() == before

    import long_gap  # the after-the-fact gap, on the same runs

    monkeypatch.setattr(long_gap, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(long_gap, "RESULTS", tmp_path / "results")
    gaps = tmp_path / "results" / "smoke" / "long_gap.json"
    assert long_gap.main(["smoke", "--orders", "8", "--prompts", "1"]) == 0
    first = json.loads(gaps.read_text())
    assert set(first) == {"base", "release_fpo-seed0", "release_fpo_dipod-seed0"}
    assert first["base"]["step"] == 0 and first["release_fpo-seed0"]["step"] == 2
    for policy in first.values():
        assert policy["gap@8"] >= -1e-5  # log-mean-exp >= mean (up to float32 rounding)
    gaps.unlink()
    assert long_gap.main(["smoke", "--orders", "8", "--prompts", "1"]) == 0
    assert json.loads(gaps.read_text()) == first  # the same prompts, completions and orders for a rerun


def test_a_bad_variant_names_the_spec_and_the_key(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\nseeds: [0]\nvariants:\n  v: {config: configs/language/sudoku_fpo.yaml, set: [objective.clip=1]}\n"
    )
    with pytest.raises(ValueError, match=r"(?s)bad.yaml, variant 'v'.*unknown key `objective.clip`"):
        experiments.load_spec(spec)


def test_the_gpu_checks_model_loads_as_llada_does_and_trains_one_lora_step(tmp_path, monkeypatch):
    """experiments/gpu at CPU size: its data parse as GSM8K, its model loads through trust_remote_code with
    LLaDA's module names and config mask id, attends both ways, and a release-regime LoRA step moves the adapters."""
    import subprocess

    import torch

    from dipod.language.trainer import LanguageTrainer
    from dipod.runs.config import load_config

    out = tmp_path / "gpu"
    prepare = [sys.executable, str(ROOT / "experiments" / "gpu" / "prepare.py"), str(out), "--size", "tiny"]
    subprocess.run([*prepare, "--train", "200", "--test", "8"], check=True, capture_output=True, cwd=ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = [f"language.data.train_path={out}/data/train.jsonl", f"language.data.eval_path={out}/data/test.jsonl"]
    cfg = load_config(
        ROOT / "experiments" / "gpu" / "gsm8k_release.yaml",
        [f"language.model.path={out}/model", "train.device=cpu", "train.bf16=false", "language.model.dtype=float32",
         "language.prompts_per_step=1", "language.num_iterations=2", "language.data.eval_size=8",
         "language.sampler.gen_length=32", "language.sampler.block_length=32", "language.sampler.steps=8", *data],
    )  # fmt: skip
    trainer = LanguageTrainer(cfg)
    net = trainer.model.net  # the adapter wraps the remote-code model (adapters injected in place)
    assert type(net).__name__ == "LladaArchModel" and trainer.tokenizer.mask_token_id == net.config.mask_token_id
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        changed = ids.clone()
        changed[0, -1] = (ids[0, -1] + 1) % 100
        first = trainer.model(ids)[0, 0]
        assert not torch.allclose(first, trainer.model(changed)[0, 0])  # position 0 sees the last token
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train_step()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert metrics["updates"] == 2 and moved and all("lora_" in n for n in moved)
    assert {n.split(".")[-4] for n in moved} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "attn_out",
        "ff_proj",
        "up_proj",
        "ff_out",
    }


def test_replaying_the_alarm_with_another_window_gives_the_flag_step(tmp_path):
    import replay_alarm

    from dipod.config import HealthConfig

    healthy = {"health/effective_tokens": 16.0, "health/empty_frac": 0.0, "health/repeat_frac": 0.0,
               "health/group_identical_frac": 0.0, "health/degenerate_frac": 0.0, "health/token_nll": 0.4,
               "health/token_confidence": 0.7, "health/elbo_per_token": -0.5}  # fmt: skip
    ratios = [0.5] * 5 + [1.0] * 3 + [0.5] * 5 + [1.0] * 12
    rows = [{"step": i + 1, **healthy, "health/zero_std_ratio": r} for i, r in enumerate(ratios)]
    assert replay_alarm.replay(rows, HealthConfig(zero_std_window=1)) == "8 (zero_std)"  # three lucky steps
    assert replay_alarm.replay(rows, HealthConfig(zero_std_window=10)) == "25 (zero_std)"  # 10 all-equal + patience
    assert replay_alarm.replay(rows[:20], HealthConfig(zero_std_window=10)) == "—"
