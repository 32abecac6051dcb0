"""Running observation normalisation with Welford/Chan batched updates (float64 statistics)."""

from __future__ import annotations

import torch


class RunningNorm(torch.nn.Module):
    """(x - mean) / sqrt(var + eps), clipped, with mean and var tracked over everything seen.

    Statistics are buffers, so they travel with ``state_dict`` and checkpoints. Batches merge with
    Chan et al.'s parallel form of Welford's update, which is exact for the population variance.
    """

    def __init__(self, dim: int, *, eps: float = 1e-8, clip: float = 10.0) -> None:
        super().__init__()
        self.eps = eps
        self.clip = clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch (B, S) into the statistics."""
        x = x.detach().to(torch.float64).reshape(-1, self.mean.shape[0])
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised x, same dtype as x; clipping at +-clip keeps rare outliers from dominating."""
        z = (x.to(torch.float64) - self.mean) / torch.sqrt(self.var + self.eps)
        return z.clamp(-self.clip, self.clip).to(x.dtype)
