"""Double drift, measured: the gap log pi - ELBO and the cosine between proxy and true policy gradients.

A policy-gradient method for a diffusion policy follows the gradient of a bound (the ELBO, an EUBO,
a one-step proxy) instead of log pi. Two numbers show when that stops being safe:

- ``drift/gap`` = log pi - ELBO on fresh samples: zero when the bound is tight, growing as
  reward-seeking updates loosen it.
- ``drift/grad_cosine``: cosine between the gradient of the method's PG loss (at rho = 1) and the
  gradient of the true-likelihood PG loss -mean(A * log pi) on the same batch. Near 1 while the bound
  is tight; lower once A * grad(gap) leaks into the proxy.

The functions here are pure (tensors and callables in, numbers out) and never touch ``.grad`` or
optimiser state, so a trainer can call them between updates without changing its trajectory.
Randomness comes from the caller's generator; a trainer should keep a separate one for the probe so
that training draws do not depend on whether the monitor runs.

Shape legend: B probe batch, K masking draws or orders, P prompt length, L completion length,
S observation dim, A action dim, N flow draws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch

DEFAULT_EVERY = 100
"""Probe interval (policy-improvement steps) at which the monitor costs <= ~10% of training.

With the config defaults (probe_size 16, num_orders 16) a language probe runs B * K * L any-order
states forward and backward: about 4-8 training steps' worth on the shipped tiny Sudoku trainer and
7-10 on bench_drift_monitor's synthetic set-up (it reports ``probe_over_step``). Shorter runs that
want denser curves set ``drift.every`` lower and pay proportionally, or shrink ``probe_size`` /
``num_orders``."""


def gap(loglik: torch.Tensor, elbo: torch.Tensor) -> torch.Tensor:
    """(B,) variational gap log pi - ELBO (>= 0 up to estimator noise)."""
    return loglik - elbo


def true_pg_loss(loglik: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """-mean(A * log pi): the REINFORCE loss whose gradient is the true policy gradient on the batch."""
    return -(adv.to(loglik.dtype) * loglik).mean()


def flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool = False) -> torch.Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` as one flat vector; parameters the loss does not reach give zeros.

    Uses ``torch.autograd.grad``, so ``.grad`` fields are left as they were.
    """
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat vectors (in float64); NaN when either is exactly zero (undefined).

    A zero gradient happens when every advantage in the batch is zero; tiny but non-zero gradients (a
    nearly deterministic policy) still have a well-defined direction, so there is no magnitude cut-off.
    """
    a64, b64 = a.double(), b.double()
    denom = a64.norm() * b64.norm()
    return float((a64 @ b64) / denom) if float(denom) > 0 else math.nan


def grad_cosine(loss_a: torch.Tensor, loss_b: torch.Tensor, params: Iterable[torch.Tensor]) -> float:
    """Cosine between the gradients of two scalar losses over the same parameter list.

    The graphs may share nodes (one forward pass feeding both losses): the first backward keeps it.
    """
    params = [p for p in params if p.requires_grad]
    grad_a = flat_grad(loss_a, params, retain_graph=True)
    grad_b = flat_grad(loss_b, params)
    return cosine(grad_a, grad_b)


# --------------------------------------------------------------------------- scheduling


class DriftMonitor:
    """Runs a probe every ``every`` steps and keeps the time it took, so its cost can be reported.

    ``probe`` is any zero-argument callable returning drift metrics (e.g. ``trainer.drift_probe``).
    ``every = 0`` disables it.
    """

    def __init__(self, probe: Callable[[], dict[str, float]], every: int = DEFAULT_EVERY) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.probe = probe
        self.every = every
        self.seconds = 0.0
        """Wall time spent inside the probe so far."""
        self.calls = 0

    def due(self, step: int) -> bool:
        """Whether the probe runs after completed step ``step`` (1-based)."""
        return self.every > 0 and step > 0 and step % self.every == 0

    def maybe_probe(self, step: int) -> dict[str, float]:
        """The probe's metrics (plus ``drift/seconds``) when due, else an empty dict."""
        if not self.due(step):
            return {}
        start = time.perf_counter()
        metrics = dict(self.probe())
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.calls += 1
        metrics["drift/seconds"] = elapsed
        return metrics
