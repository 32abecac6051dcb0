"""Health signals on synthetic completions (hand-computed values) and the collapse alarm."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError

from dipod.advantages import group_advantages
from dipod.diagnostics.health import (
    CollapseAlarm,
    HealthConfig,
    HealthSignals,
    degenerate_outputs,
    effective_tokens,
    elbo_per_token,
    health_signals,
    relative_drop,
    token_nll_and_confidence,
    zero_std_ratio,
)

EOS, PAD = 9, 8

# G = 2, L = 5. Content = tokens before the first EOS that are not padding.
COMPLETIONS = torch.tensor([
    [9, 9, 9, 9, 9],  # r0: empty
    [8, 8, 9, 8, 8],  # r1: padding then EOS: empty          (r0, r1): both empty -> group-identical
    [5, 5, 5, 9, 1],  # r2: content 5 5 5 -> repeated
    [5, 9, 5, 6, 6],  # r3: content "5", one token: not "repeated" (min length 2)
    [1, 2, 3, 9, 4],  # r4: content 1 2 3
    [1, 2, 3, 9, 7],  # r5: content 1 2 3 (differs only after EOS)  (r4, r5): group-identical
    [1, 2, 3, 4, 9],  # r6: content 1 2 3 4
    [1, 2, 3, 9, 9],  # r7: content 1 2 3                           (r6, r7): differ
])  # fmt: skip


def test_effective_tokens_and_relative_drop():
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert effective_tokens(valid).item() == pytest.approx(2.0)  # (3 + 1 + 0 + 4) / 4
    assert relative_drop(4.0, 16.0) == pytest.approx(0.75)  # 1 - 4/16
    assert relative_drop(20.0, 16.0) == pytest.approx(-0.25)  # rose
    assert math.isnan(relative_drop(1.0, 0.0))
    assert math.isnan(relative_drop(1.0, math.nan))


def test_zero_std_ratio():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5 + 1e-8, 0.2, 0.2, 0.3])
    # groups of 3: [1 1 1] equal, [0 1 0] not, [.5 .5 .5+1e-8] equal within 1e-6, [.2 .2 .3] not -> 2 / 4
    assert zero_std_ratio(rewards, 3).item() == pytest.approx(0.5)
    # group-centred advantages are zero exactly where rewards are equal: the same answer
    adv = (rewards.view(4, 3) - rewards.view(4, 3).mean(-1, keepdim=True)).reshape(-1)
    assert zero_std_ratio(adv, 3).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="groups of 5"):
        zero_std_ratio(rewards, 5)


def test_zero_std_ratio_on_std_normalised_advantages():
    # a group of 6 equal rewards 21/39: the float32 group mean is off by an ulp and dividing by std + 1e-4
    # magnifies that residue to ~6e-4, far above 1e-6; the advantages are still all equal, which is measured
    rewards = torch.tensor([21 / 39] * 6 + [0.0, 1.0, 0.5, 0.5, 0.25, 1.0])
    adv = group_advantages(rewards, 6, normalize_std=True)
    assert adv[:6].abs().max() > 1e-4  # not zero: a test on |A| would miss this group
    assert zero_std_ratio(adv, 6).item() == pytest.approx(0.5)


def test_degenerate_outputs():
    deg = degenerate_outputs(COMPLETIONS, 2, eos_id=EOS, pad_id=PAD)
    assert deg.empty.tolist() == [True, True, False, False, False, False, False, False]
    assert deg.repeated.tolist() == [False, False, True, False, False, False, False, False]
    assert deg.group_identical.tolist() == [True, True, False, False, True, True, False, False]
    assert deg.any().tolist() == [True, True, True, False, True, True, False, False]  # 5 / 8
    assert deg.any(group_identical=False).tolist() == [True, True, True] + [False] * 5  # 3 / 8


def test_repeated_without_eos_and_min_length():
    ids = torch.tensor([[4, 4, 4, 4], [4, 4, 4, 3], [4, 4, 9, 9], [4, 9, 9, 9]])
    deg = degenerate_outputs(ids, 1, eos_id=EOS)
    assert deg.repeated.tolist() == [True, False, True, False]  # "4" alone is one token: not flagged
    assert deg.group_identical.tolist() == [False] * 4  # G = 1: no group to be identical to
    assert degenerate_outputs(ids, 1, eos_id=EOS, min_repeat_length=1).repeated.tolist() == [True, False, True, True]


def test_token_nll_and_confidence():
    probs = torch.tensor([[[0.5, 0.25, 1.0], [0.8, 0.1, 0.5]]])  # (B=1, K=2, L=3)
    mask = torch.tensor([[[True, True, False], [False, True, True]]])
    valid = torch.tensor([[True, True, False]])
    nll, conf = token_nll_and_confidence(probs.log(), mask, valid)
    # counted: (k0, 0) p=.5, (k0, 1) p=.25, (k1, 1) p=.1 ; (k1, 2) is masked but not valid
    assert nll.item() == pytest.approx((math.log(2) + math.log(4) + math.log(10)) / 3)  # 1.4607
    assert conf.item() == pytest.approx((0.5 + 0.25 + 0.1) / 3)
    nll, conf = token_nll_and_confidence(probs.log(), torch.zeros_like(mask), valid)
    assert math.isnan(nll.item()) and math.isnan(conf.item())


def test_elbo_per_token_is_token_weighted():
    valid = torch.tensor([[True, True, True], [True, False, False]])
    # sequence ELBOs -6 (3 tokens) and -2 (1 token): (-6 - 2) / 4 = -2, not the mean of row means (-2 - 2) / 2
    assert elbo_per_token(torch.tensor([-6.0, -2.0]), valid).item() == pytest.approx(-2.0)
    valid2 = torch.tensor([[True, True, True], [True, True, False]])
    # -6 over 3 tokens and -1 over 2: (-6 - 1) / 5 = -1.4
    assert elbo_per_token(torch.tensor([-6.0, -1.0]), valid2).item() == pytest.approx(-1.4)
    # the same bounds given per token (SPG's scale): -2 and -0.5
    assert elbo_per_token(torch.tensor([-2.0, -0.5]), valid2, elbo_scale="mean").item() == pytest.approx(-1.4)
    with pytest.raises(ValueError, match="unknown ELBO scale"):
        elbo_per_token(torch.zeros(2), valid, elbo_scale="token")


def test_health_signals_gathers_everything():
    valid = COMPLETIONS != EOS  # any (B, L) mask; scored lengths 0, 4, 4, 4, 4, 4, 4, 3 -> 27 / 8
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.25])  # groups: equal, no, equal, no -> 0.5
    token_logp = torch.full((8, 2, 5), math.log(0.5))
    mask = torch.ones(8, 2, 5, dtype=torch.bool)
    elbo = -valid.sum(-1).float() * 0.7  # 0.7 nats per scored token
    out = health_signals(
        COMPLETIONS, valid, rewards, 2, eos_id=EOS, pad_id=PAD, token_logp=token_logp, draw_mask=mask, elbo=elbo
    )
    assert out.effective_tokens == pytest.approx(27 / 8)
    assert out.zero_std_ratio == pytest.approx(0.5)
    assert (out.empty_frac, out.repeat_frac, out.group_identical_frac) == pytest.approx((2 / 8, 1 / 8, 4 / 8))
    assert out.degenerate_frac == pytest.approx(5 / 8)
    assert out.token_nll == pytest.approx(math.log(2))
    assert out.token_confidence == pytest.approx(0.5)
    assert out.elbo_per_token == pytest.approx(-0.7)
    assert set(out.metrics()) >= {"health/effective_tokens", "health/zero_std_ratio", "health/degenerate_frac"}
    bare = health_signals(COMPLETIONS, valid, rewards, 2, eos_id=EOS, group_identical_is_degenerate=False)
    assert math.isnan(bare.token_nll) and math.isnan(bare.elbo_per_token)
    assert bare.degenerate_frac == pytest.approx(3 / 8)  # pad 8 is content now: r0 empty, r1 (8 8) and r2 repeated


# ---------------------------------------------------------------------------------------------- alarm

HEALTHY = HealthSignals(
    effective_tokens=16.0,
    zero_std_ratio=0.25,
    empty_frac=0.0,
    repeat_frac=0.0,
    group_identical_frac=0.0,
    degenerate_frac=0.0,
    token_nll=0.4,
    token_confidence=0.7,
    elbo_per_token=-0.5,
)


def _healthy_run(steps: int, seed: int = 0) -> list[HealthSignals]:
    """A healthy run: every signal wobbles by a few percent around its start (and nll sharpens slowly)."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(steps, 4, generator=g) - 0.5).tolist()
    return [
        replace(
            HEALTHY,
            effective_tokens=16.0 + 2 * n[0],
            zero_std_ratio=0.25 + 0.25 * n[1],
            degenerate_frac=0.05 + 0.1 * n[2],
            token_nll=0.4 * (1 - 0.3 * i / steps) + 0.02 * n[3],
            elbo_per_token=-0.5 + 0.1 * n[3],
        )
        for i, n in enumerate(noise)
    ]


def test_healthy_run_stays_quiet():
    alarm = CollapseAlarm(HealthConfig())
    reports = [alarm.update(s) for s in _healthy_run(50)]
    assert not any(r.fired for r in reports) and not reports[-1].collapsed
    assert reports[-1].metrics["health/collapsed"] == 0.0 and reports[-1].metrics["health/alarms"] == 0.0
    assert math.isnan(reports[1].metrics["health/effective_tokens_drop"])  # reference needs 3 steps
    assert math.isfinite(reports[2].metrics["health/effective_tokens_drop"])
    assert alarm.summary() == {"collapsed": False, "step": None, "signals": ()}


def test_tokens_drop_fires_after_patience():
    # reference 16 (steps 0-2); from step 3 on 4 tokens: drop 1 - 4/16 = 0.75 > 0.5 -> streaks 1, 2, 3
    alarm = CollapseAlarm(HealthConfig(reference_steps=3, patience=3))
    signals = [HEALTHY] * 3 + [replace(HEALTHY, effective_tokens=4.0)] * 4
    reports = [alarm.update(s) for s in signals]
    assert [r.fired for r in reports] == [()] * 5 + [("tokens_drop",)] * 2
    assert reports[3].metrics["health/effective_tokens_drop"] == pytest.approx(0.75)
    assert [r.collapsed for r in reports] == [False] * 5 + [True] * 2
    assert reports[-1].collapsed_at == 5
    assert (reports[4].describe(), reports[5].describe()) == ("", "COLLAPSED@5 [tokens_drop]")
    assert alarm.summary() == {"collapsed": True, "step": 5, "signals": ("tokens_drop",)}


def test_one_bad_step_is_forgiven_and_collapse_is_sticky():
    alarm = CollapseAlarm(HealthConfig(patience=2, zero_std_window=1))
    bad = replace(HEALTHY, zero_std_ratio=1.0)
    reports = [alarm.update(s) for s in [HEALTHY, bad, HEALTHY, bad, bad, HEALTHY, HEALTHY]]
    assert [r.fired for r in reports] == [(), (), (), (), ("zero_std",), (), ()]
    assert [r.collapsed for r in reports] == [False] * 4 + [True] * 3  # flagged from step 4 on
    assert reports[-1].metrics["health/alarms"] == 0.0 and reports[-1].metrics["health/collapsed"] == 1.0
    assert reports[-1].describe() == "COLLAPSED@4"  # the flag stays after the signal calms down


@pytest.mark.parametrize(
    ("bad", "signal"),
    [
        (dict(zero_std_ratio=1.0), "zero_std"),  # > 0.95
        (dict(degenerate_frac=0.75), "degenerate"),  # > 0.5
        (dict(token_nll=0.03), "nll_drop"),  # 1 - 0.03 / 0.4 = 0.925 > 0.9
        (dict(elbo_per_token=-2.0), "elbo_shift"),  # -2.0 - (-0.5) = -1.5, |.| > 1.0
        (dict(elbo_per_token=0.6), "elbo_shift"),  # +1.1 > 1.0 (runaway upwards counts too)
    ],
)
def test_each_signal_fires(bad: dict, signal: str):
    alarm = CollapseAlarm(HealthConfig(patience=1, zero_std_window=1))
    reports = [alarm.update(s) for s in [HEALTHY] * 3 + [replace(HEALTHY, **bad)]]
    assert [r.fired for r in reports] == [(), (), (), (signal,)]


def test_equal_reward_groups_are_pooled_over_a_window_of_steps():
    # 4 groups a step: runs of steps where every group's rewards happen to be equal, in a healthy run
    lucky = [replace(HEALTHY, zero_std_ratio=r) for r in [1.0, 1.0, 1.0, 0.75, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0] * 3]
    one_step = CollapseAlarm(HealthConfig(zero_std_window=1))
    assert [one_step.update(s).fired for s in lucky][:3] == [(), (), ("zero_std",)]  # three lucky steps: flagged
    alarm = CollapseAlarm(HealthConfig(zero_std_window=10))
    reports = [alarm.update(s) for s in lucky]
    assert not any(r.fired for r in reports)  # pooled over 10 steps: 0.925 <= 0.95
    assert math.isnan(reports[8].metrics["health/zero_std_pooled"])  # not yet 10 steps
    assert reports[9].metrics["health/zero_std_pooled"] == pytest.approx(0.925)
    collapsed = [alarm.update(replace(HEALTHY, zero_std_ratio=1.0)) for _ in range(12)]
    # the 0.5 leaves the window at the 9th step (then every pooled value is 1.0), and patience adds two more
    assert [bool(r.fired) for r in collapsed] == [False] * 10 + [True] * 2


def test_below_thresholds_and_disabled_signals_stay_quiet():
    near = replace(HEALTHY, effective_tokens=8.5, zero_std_ratio=0.9, degenerate_frac=0.5, token_nll=0.05)
    # drop 1 - 8.5/16 = 0.47 < 0.5 ; 0.9 < 0.95 ; 0.5 is not > 0.5 ; nll drop 1 - 0.05/0.4 = 0.875 < 0.9
    alarm = CollapseAlarm(HealthConfig(patience=1))
    assert [alarm.update(s).fired for s in [HEALTHY] * 3 + [near] * 3] == [()] * 6
    off = HealthConfig(patience=1, max_tokens_drop=None, max_zero_std_ratio=None)
    alarm = CollapseAlarm(off)
    collapsed = replace(HEALTHY, effective_tokens=0.0, zero_std_ratio=1.0)
    assert [alarm.update(s).fired for s in [HEALTHY] * 3 + [collapsed] * 3] == [()] * 6


def test_nan_signals_never_fire_nor_enter_the_reference():
    missing = replace(HEALTHY, token_nll=math.nan, elbo_per_token=math.nan)
    alarm = CollapseAlarm(HealthConfig(patience=1))
    reports = [alarm.update(s) for s in [missing] * 5 + [HEALTHY] * 3 + [replace(HEALTHY, token_nll=0.01)]]
    assert [r.fired for r in reports] == [()] * 8 + [("nll_drop",)]  # the reference is the 3 finite steps


def test_state_round_trip_gives_identical_flags():
    cfg = HealthConfig(patience=2)
    run = _healthy_run(8, seed=1) + [replace(HEALTHY, effective_tokens=2.0, token_nll=0.01)] * 4 + _healthy_run(4)
    straight = CollapseAlarm(cfg)
    expected = [straight.update(s) for s in run]
    first = CollapseAlarm(cfg)
    for s in run[:9]:  # stop mid-streak: one step past threshold already counted
        first.update(s)
    resumed = CollapseAlarm(cfg)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got = [resumed.update(s) for s in run[9:]]
    for a, b in zip(expected[9:], got, strict=True):
        assert (a.fired, a.collapsed, a.collapsed_at) == (b.fired, b.collapsed, b.collapsed_at)
        assert json.dumps(a.metrics) == json.dumps(b.metrics)
    assert expected[9].fired == ("tokens_drop", "nll_drop")  # the resumed half does contain the collapse
    assert resumed.summary() == straight.summary()


def test_config_is_strict():
    with pytest.raises(ValidationError):
        HealthConfig(max_token_drop=0.5)  # typo: unknown key
    cfg = HealthConfig()
    with pytest.raises(ValidationError):
        cfg.patience = 0
    with pytest.raises(ValidationError):
        cfg.max_zero_std_ratio = 1.5
    cfg.max_elbo_shift = None  # None turns a signal off
    assert cfg.enabled and cfg.reference_steps == 3
