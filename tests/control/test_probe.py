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
    assert set(out) == {
        "drift/invertible_frac",
        "drift/loglik",
        "drift/cfm_surrogate",
        "drift/cfm_gap",
        "drift/grad_cosine",
    }
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert -1.0 <= out["drift/grad_cosine"] <= 1.0
    assert all(p.grad is None for p in net.parameters())


class _Squashing(FlowPolicy):
    """One Euler step maps y to tanh(y) (plus a small learned term): actions outside (-1, 1) have no preimage."""

    def velocity(self, x, tau, obs):
        return x - torch.tanh(x) + 1e-3 * super().velocity(x, tau, obs)


def test_control_probe_leaves_out_rows_whose_step_map_does_not_invert():
    g = torch.Generator().manual_seed(0)
    net = _Squashing(2, 1, hidden=(8,), activation="tanh", sampling_steps=1, generator=g)
    obs = torch.randn(4, 2, generator=g)
    act, adv = torch.tensor([[0.5], [3.0], [-0.2], [-4.0]]), torch.tensor([1.0, -1.0, 0.5, 2.0])
    draws = draw_flow_noise(4, 4, 1, generator=g)
    params = make_params("control", "fpo_pp")
    out = flow_drift_metrics(net, obs, act, adv, draws, params)
    assert out["drift/invertible_frac"] == 0.5
    kept = torch.tensor([0, 2])
    assert out == {**flow_drift_metrics(net, obs[kept], act[kept], adv[kept], draws[kept], params),
                   "drift/invertible_frac": 0.5}  # fmt: skip
