"""The drift probe on a real LanguageTrainer: fresh completions, own random streams, no side effects."""

from __future__ import annotations

import math

import pytest
import torch

from dipod.language.trainer import LanguageTrainer
from tests.language.language_helpers import tiny_config


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
    assert probed.train_step() == plain.train_step()
