"""Exact Euler log-likelihood, vectorised over the batch vs a per-sample loop (goal >= 5x, <= 1e-6 apart)."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.timing import interleaved_medians
from dipod.bounds.flow import euler_loglik


class Field(nn.Module):
    def __init__(self, action_dim: int, obs_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(action_dim + 1 + obs_dim, 64), nn.Tanh(), nn.Linear(64, action_dim))

    def forward(self, x, tau, obs):
        return 0.5 * self.net(torch.cat([x, tau[:, None], obs], -1))


def run(quick: bool) -> dict:
    torch.manual_seed(0)
    batch, action_dim, obs_dim, steps = 64, 2, 3, 8
    field = Field(action_dim, obs_dim).double()
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, obs_dim, generator=g, dtype=torch.float64)
    actions = torch.randn(batch, action_dim, generator=g, dtype=torch.float64)

    @torch.no_grad()
    def vectorised():
        return euler_loglik(field, obs, actions, steps)

    @torch.no_grad()
    def loop():
        return torch.cat([euler_loglik(field, obs[i : i + 1], actions[i : i + 1], steps) for i in range(batch)])

    diff = (vectorised() - loop()).abs().max().item()
    med = interleaved_medians({"vec": vectorised, "loop": loop}, repeats=3 if quick else 10, warmup=1)
    return {
        "figures": {"vectorised_speedup": med["loop"] / med["vec"], "max_abs_diff": diff},
        "reference": f"per-sample loop over B={batch} (A={action_dim}, {steps} Euler steps, float64)",
    }
