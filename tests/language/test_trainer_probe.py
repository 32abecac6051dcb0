"""The drift probe on a real LanguageTrainer: fresh completions, own random streams, no side effects."""

from __future__ import annotations

import math

import pytest
import torch

from dipod.language.trainer import LanguageTrainer
from tests.language.language_helpers import tiny_config
from tests.runs.cli_helpers import untimed


@pytest.mark.parametrize("name", ["fpo", "spg"])
def test_probe_keys_and_training_unchanged(name: str) -> None:
    cfg = tiny_config(objective={"name": name}, drift={"every": 1, "probe_size": 4, "num_orders": 4})
    probed, plain = LanguageTrainer(cfg), LanguageTrainer(cfg)
    before = [p.detach().clone() for p in probed.params]
    out = probed.drift_probe()
    for key in ("drift/elbo", "drift/loglik", "drift/gap", "drift/grad_cosine"):
        assert math.isfinite(out[key]) or (key == "drift/grad_cosine" and math.isnan(out[key]))
    assert out["drift/gap"] >= 0.0  # IW over the same orders >= their mean
    assert out["drift/num_orders"] == 4.0 and out["drift/exact"] == 0.0
    for p, p0 in zip(probed.params, before, strict=True):
        assert p.grad is None
        torch.testing.assert_close(p.detach(), p0)
    # The probe draws from its own streams: the next training step is the same as without it.
    after_probe, without = untimed(probed.train_step()), untimed(plain.train_step())
    assert after_probe.keys() == without.keys()
    pairs = zip(after_probe.values(), without.values(), strict=True)
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in pairs)
