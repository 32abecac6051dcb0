"""Flow policy (a conditional velocity field sampled by Euler steps), the Gaussian baseline, and the critic.

Shape legend: B batch, N (tau, eps) draws, A action dim, S observation dim, H time-embedding size.
Observations reaching these modules are already normalised; the trainer owns the normaliser.
"""

from __future__ import annotations

import itertools
import math
from typing import Protocol

import torch
from torch import nn

from dipod.bounds.flow import FlowDraws, cfm_loss, draw_flow_noise, euler_loglik, euler_sample

ACTIVATIONS = {"elu": nn.ELU, "tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


def mlp(
    sizes: list[int], activation: str, *, out_gain: float = 1.0, generator: torch.Generator | None = None
) -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last); orthogonal init as in PPO codes.

    The init draws from ``generator`` so a run's weights depend on its seed only, not on global RNG state.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2), generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def time_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """(M, H) sinusoidal features [sin(tau * 2^k * pi), cos(tau * 2^k * pi)], k = 0..H/2-1 (FPO++'s t * 2^k)."""
    freqs = math.pi * 2.0 ** torch.arange(dim // 2, device=tau.device, dtype=tau.dtype)  # (H/2,)
    angles = tau[:, None] * freqs  # (M, H/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowPolicy(nn.Module):
    """pi(a | s): push a Gaussian sample through N Euler steps of a learned velocity field v(x_tau, tau, s).

    Actions live in env units; the flow works on a / actor_scale, so
    log pi(a | s) = log pi_flow(a / scale | s) - A * log(scale).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "elu",
        time_embed_dim: int = 8,
        actor_scale: float = 1.0,
        output_scale: float = 1.0,
        sampling_steps: int = 8,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.time_embed_dim = time_embed_dim
        self.actor_scale = actor_scale
        self.output_scale = output_scale
        self.sampling_steps = sampling_steps
        self.net = mlp(
            [obs_dim + time_embed_dim + action_dim, *hidden, action_dim], activation, out_gain=0.01, generator=generator
        )

    def velocity(self, x: torch.Tensor, tau: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """(M, A) velocity at x (M, A), tau (M,), obs (M, S)."""
        features = torch.cat([obs, time_embedding(tau, self.time_embed_dim), x], dim=-1)
        return self.output_scale * self.net(features)

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, A) actions in env units; deterministic given the generator's state."""
        noise = torch.randn(obs.shape[0], self.action_dim, generator=generator, device=obs.device, dtype=obs.dtype)
        return euler_sample(self.velocity, obs, noise, self.sampling_steps) * self.actor_scale

    def cfm_losses(self, obs: torch.Tensor, actions: torch.Tensor, draws: FlowDraws) -> torch.Tensor:
        """(B, N) per-draw CFM losses of env-unit actions (B, A); -mean over N is the ELBO surrogate."""
        return cfm_loss(self.velocity, obs, actions / self.actor_scale, draws)

    def loglik(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B,) exact log-likelihood of env-unit actions under the Euler sampler (small A only)."""
        scaled = actions / self.actor_scale
        return euler_loglik(self.velocity, obs, scaled, self.sampling_steps) - self.action_dim * math.log(
            self.actor_scale
        )

    def draw_noise(self, size: int, num_draws: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The (tau, eps) draws stored with ``size`` transitions and reused by every update (common random numbers):
        ``tau`` (B, N), ``eps`` (B, N, A)."""
        draws = draw_flow_noise(size, num_draws, self.action_dim, generator=generator, device=generator.device)
        return {"tau": draws.tau, "eps": draws.eps}

    def score(self, obs: torch.Tensor, actions: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) per-draw CFM losses on the stored noise: what the flow objectives compare."""
        return self.cfm_losses(obs, actions, FlowDraws(noise["tau"], noise["eps"]))


class Policy(Protocol):
    """What the control trainer needs of an actor: a flow policy and the Gaussian baseline answer alike."""

    action_dim: int

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, A) actions in env units for observations (B, S)."""
        ...

    def draw_noise(self, size: int, num_draws: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-transition noise the scores need, stored with the rollout (empty when none)."""
        ...

    def score(self, obs: torch.Tensor, actions: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the objective compares between old and new policies: (B, N) CFM losses or (B,) log-probs."""
        ...


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian with a state-independent log std: the PPO baseline with exact log-probabilities."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "elu",
        init_log_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.mean_net = mlp([obs_dim, *hidden, action_dim], activation, out_gain=0.01, generator=generator)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mean_net(obs), self.log_std.exp())

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, A) actions; deterministic given the generator's state."""
        noise = torch.randn(obs.shape[0], self.action_dim, generator=generator, device=obs.device, dtype=obs.dtype)
        return self.mean_net(obs) + self.log_std.exp() * noise

    def loglik(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B,) exact log-probability."""
        return self.distribution(obs).log_prob(actions).sum(-1)

    def draw_noise(self, size: int, num_draws: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """No noise to store: the log-likelihood is exact."""
        return {}

    def score(self, obs: torch.Tensor, actions: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) exact log-probabilities: what PPO compares."""
        return self.loglik(obs, actions)


class Critic(nn.Module):
    """V(s) as an MLP."""

    def __init__(
        self,
        obs_dim: int,
        *,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "elu",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, 1], activation, out_gain=1.0, generator=generator)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B,) values."""
        return self.net(obs).squeeze(-1)
