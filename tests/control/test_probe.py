"""The control drift probe: keys, finite values, no side effects."""

from __future__ import annotations

import torch

from dipod.bounds.flow import draw_flow_noise
from dipod.control.policy import FlowPolicy
from dipod.control.probe import flow_drift_metrics
from dipod.objectives import make_params


def test_control_probe() -> None:
    g = torch.Generator().manual_seed(0)
    net = FlowPolicy(2, 1, hidden=(16,), activation="tanh", sampling_steps=4, generator=g)
    obs, act, adv = torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g), torch.randn(8, generator=g)
    draws = draw_flow_noise(8, 4, 1, generator=g)
    out = flow_drift_metrics(net, obs, act, adv, draws, make_params("control", "fpo_pp"))
    assert set(out) == {"drift/loglik", "drift/cfm_surrogate", "drift/cfm_gap", "drift/grad_cosine"}
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert -1.0 <= out["drift/grad_cosine"] <= 1.0
    assert all(p.grad is None for p in net.parameters())
