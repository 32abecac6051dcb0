"""Every shipped YAML config (configs/ and the package's embedded dipod/configs/) validates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dipod.runs.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("dipod/configs/**/*.yaml")])


BASES = [p for p in CONFIGS if re.search(r"^base:", p.read_text(), re.M)]


def test_there_are_configs():
    assert any(p.parts[-3:-1] == ("configs", "demo") for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.domain in path.read_text() or path in BASES  # a layered config inherits its domain


@pytest.mark.parametrize("path", BASES, ids=[str(p.relative_to(ROOT)) for p in BASES])
def test_a_layered_config_is_its_base_plus_its_own_keys(path):
    import yaml

    from dipod.config import merge

    own = yaml.safe_load(path.read_text())
    base = load_config(path.parent / own.pop("base"))
    assert load_config(path).model_dump() == load_config_from(merge(base.model_dump(mode="json"), own)).model_dump()


def load_config_from(data):
    from dipod.runs.config import validate_config

    return validate_config(data)
