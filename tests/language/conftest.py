"""Fixtures of the language tests."""

from __future__ import annotations

import pytest

from dipod.runs.config import RunConfig
from tests.language.language_helpers import tiny_config


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()
