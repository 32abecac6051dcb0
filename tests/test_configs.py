"""Every shipped YAML config (configs/ and the package's embedded dipod/configs/) validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from dipod.runs.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("dipod/configs/**/*.yaml")])


def test_there_are_configs():
    assert any(p.parts[-3:-1] == ("configs", "demo") for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.domain in path.read_text()
