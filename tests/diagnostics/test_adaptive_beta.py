"""The adaptive DiPOD weight rule."""

from __future__ import annotations

import math

import pytest

from dipod.diagnostics.adaptive_beta import AdaptiveBetaConfig, adapt_beta

CFG = AdaptiveBetaConfig(budget=0.3, factor=2.0, beta_min=0.01, beta_max=0.4)


def test_above_budget_multiplies() -> None:
    assert adapt_beta(0.05, 0.31, CFG) == pytest.approx(0.1)


def test_below_budget_over_hysteresis_divides() -> None:
    assert adapt_beta(0.05, 0.19, CFG) == pytest.approx(0.025)  # 0.19 < 0.3 / 1.5 = 0.2


def test_inside_band_keeps() -> None:
    for gap in (0.2, 0.25, 0.3):
        assert adapt_beta(0.05, gap, CFG) == pytest.approx(0.05)


def test_clamped() -> None:
    assert adapt_beta(0.3, 1.0, CFG) == pytest.approx(0.4)
    assert adapt_beta(0.015, 0.0, CFG) == pytest.approx(0.01)
    assert adapt_beta(5.0, 0.25, CFG) == pytest.approx(0.4)  # out-of-range start is clamped too


def test_non_finite_gap_keeps_beta() -> None:
    assert adapt_beta(0.05, math.nan, CFG) == pytest.approx(0.05)
    assert adapt_beta(0.05, math.inf, CFG) == pytest.approx(0.05)


def test_repeated_overshoot_reaches_max() -> None:
    beta = 0.01
    for _ in range(10):
        beta = adapt_beta(beta, 10.0, CFG)
    assert beta == pytest.approx(0.4)


@pytest.mark.parametrize(
    "kwargs", [dict(budget=0.0), dict(budget=1.0, factor=1.0), dict(budget=1.0, beta_min=0.5, beta_max=0.1)]
)
def test_bad_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaptiveBetaConfig(**kwargs)
