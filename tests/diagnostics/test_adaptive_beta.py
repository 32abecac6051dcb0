"""The adaptive DiPOD weight: the gap rule, and the controller that a collapse signal overrules."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from dipod.diagnostics.adaptive_beta import AdaptiveBetaConfig, TwoSignalBeta, adapt_beta

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


# ------------------------------------------------------------------------------ gap + collapse signal

TWO = AdaptiveBetaConfig(budget=0.3, factor=2.0, beta_min=0.01, beta_max=0.4)
NLL = 0.4  # the healthy run's token NLL (entropy estimate)


def test_without_collapse_it_is_the_gap_rule():
    gaps = [0.31, math.nan, 0.19, 0.25, 10.0, 10.0, 10.0, 0.0, math.nan, 0.05]
    ctrl, beta = TwoSignalBeta(TWO, 0.05), 0.05
    for gap in gaps:
        beta = adapt_beta(beta, gap, CFG)  # CFG above: the same budget, factor and clamps
        assert ctrl.update(gap, token_nll=NLL, zero_std_ratio=0.25) == pytest.approx(beta)
        assert not ctrl.collapsing


def test_collapsed_policy_does_not_get_more_beta():
    # reference NLL 0.4 over 3 steps; then the policy turns deterministic: NLL 0.1 (drop 0.75 > 0.5)
    ctrl = TwoSignalBeta(TWO, 0.05)
    for _ in range(3):
        ctrl.update(math.nan, token_nll=NLL)
    # a large gap alone would double beta (0.05 -> 0.1); collapsing, it halves instead
    assert ctrl.update(1.0, token_nll=0.1) == pytest.approx(0.025)
    assert ctrl.collapsing and ctrl.metrics() == {"dipod_beta": 0.025, "dipod_beta_collapsing": 1.0}
    assert adapt_beta(0.05, 1.0, CFG) == pytest.approx(0.1)  # what the gap-only rule would have done
    hold = TwoSignalBeta(TWO.model_copy(update={"on_collapse": "hold"}), 0.05)
    for _ in range(3):
        hold.update(math.nan, token_nll=NLL)
    assert hold.update(1.0, token_nll=0.1) == pytest.approx(0.05)  # held, not grown
    assert hold.update(1.0, token_nll=NLL) == pytest.approx(0.1)  # entropy back: the gap rule again


def test_equal_reward_groups_are_a_collapse_signal():
    ctrl = TwoSignalBeta(TWO, 0.2)
    assert ctrl.update(1.0, zero_std_ratio=0.9) == pytest.approx(0.1)  # 0.9 > 0.8: halve despite the gap
    assert ctrl.update(1.0, zero_std_ratio=0.75) == pytest.approx(0.2)  # 0.75 <= 0.8: gap rule, double
    off = TwoSignalBeta(TWO.model_copy(update={"max_zero_std_ratio": None}), 0.2)
    assert off.update(1.0, zero_std_ratio=1.0) == pytest.approx(0.4)


def test_beta_changes_only_when_the_gap_is_measured():
    ctrl = TwoSignalBeta(TWO, 0.05)
    for _ in range(3):
        assert ctrl.update(token_nll=NLL) == pytest.approx(0.05)
    assert ctrl.update(token_nll=0.01) == pytest.approx(0.05)  # collapsing, but no measurement yet
    assert ctrl.collapsing
    assert ctrl.update(0.25, token_nll=0.01) == pytest.approx(0.025)  # measured: shrink


def test_two_signal_state_round_trip():
    gaps = [math.nan, 0.5, math.nan, 0.5, 0.1, math.nan, 0.5, 0.5, 0.0, 0.5]
    nlls = [0.4, 0.41, 0.39, 0.1, 0.1, 0.4, 0.4, 0.05, 0.4, 0.4]
    straight = TwoSignalBeta(TWO, 0.05)
    expected = [straight.update(g, token_nll=n) for g, n in zip(gaps, nlls, strict=True)]
    first = TwoSignalBeta(TWO, 0.05)
    for g, n in zip(gaps[:2], nlls[:2], strict=True):  # stop before the entropy reference is complete
        first.update(g, token_nll=n)
    resumed = TwoSignalBeta(TWO, 0.9)  # the constructor's beta is overwritten by the state
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got = [resumed.update(g, token_nll=n) for g, n in zip(gaps[2:], nlls[2:], strict=True)]
    assert got == expected[2:]
    assert len(set(expected)) > 2  # the sequence does move beta both ways


def test_two_signal_config_is_strict():
    with pytest.raises(ValidationError):
        AdaptiveBetaConfig()  # the budget has no default: it depends on the task's ELBO scale
    with pytest.raises(ValidationError):
        AdaptiveBetaConfig(budget=0.3, beta_min=0.5, beta_max=0.1)
    with pytest.raises(ValidationError):
        AdaptiveBetaConfig(budget=0.3, entropy_drop=0.5)  # unknown key
    cfg = AdaptiveBetaConfig(budget=0.3)
    with pytest.raises(ValidationError):
        cfg.factor = 1.0
    assert TwoSignalBeta(cfg, 5.0).beta == 1.0  # an out-of-range start is clamped
