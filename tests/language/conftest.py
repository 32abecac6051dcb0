"""Fixtures of the language tests."""

from __future__ import annotations

import pytest
from language_helpers import tiny_config

from dipod.config import RunConfig


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()
