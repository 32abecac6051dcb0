"""The shipped example config for any local masked LM trains and evaluates real transformers models via the CLI."""

from __future__ import annotations

import json

import pytest

from dipod.runs.config import load_config
from tests.language.test_models import write_bert, write_remote_code_model
from tests.runs.cli_helpers import ROOT, dipod

CONFIG = ROOT / "configs" / "language" / "hf_masked_lm_sudoku.yaml"


def test_hf_example_config_names_no_lora_targets():
    cfg = load_config(CONFIG)
    assert cfg.language.model.kind == "hf" and cfg.language.model.lora_target_modules is None


@pytest.mark.parametrize(
    ("write", "extra"),
    [
        (write_bert, []),  # AutoModelForMaskedLM, peft's default targets for BERT
        (
            write_remote_code_model,
            ["language.model.trust_remote_code=true", "language.model.lora_target_modules=[ff_out]"],
        ),
    ],
    ids=["bert", "remote_code"],
)
def test_hf_example_config_trains_and_evaluates_a_local_model(tmp_path, write, extra):
    model_dir = write(tmp_path / "model")
    run = tmp_path / "run"
    overrides = [
        f"language.model.path={model_dir}", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2", *extra
    ]  # fmt: skip
    result = dipod("train", CONFIG, "--out", run, "--quiet", *[a for o in overrides for a in ("--set", o)], fake=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all("log_ratio_mean" in r and "clipped_ratio_mean" in r for r in rows if "loss" in r)
    assert any("eval/accuracy" in r for r in rows)
    result = dipod("eval", run, "--quiet", fake=False)
    assert result.returncode == 0, result.stderr[-3000:]
