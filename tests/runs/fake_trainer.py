"""A small deterministic trainer that follows the Trainer protocol, for testing the run machinery.

Linear regression on fresh random data each step, with AdamW and an explicit generator, so its
metrics depend on every piece of state a checkpoint must carry (weights, optimiser moments,
generator, step counters). It also draws from the global python/numpy/torch generators, so a resume
that forgot to restore them shows up as different metrics. ``nan_from`` makes every loss from that
step on NaN (updates skipped, as real trainers do) to exercise the stopping rule; ``delay_s``
slows each step down so a subprocess can be killed mid-run.
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch

from dipod.runs.config import RunConfig, validate_config
from dipod.optim import clip_and_step, loss_is_finite

DIM = 4
BATCH = 16
UPDATES = 2


def fake_config(**train: object) -> RunConfig:
    """A control-domain RunConfig (the fake ignores the domain section)."""
    return validate_config(
        {"domain": "control", "name": "fake", "seed": 3, "control": {}, "train": {"checkpoint_every": 2, **train}}
    )


class FakeTrainer:
    def __init__(
        self,
        cfg: RunConfig,
        *,
        device: str | None = None,
        nan_from: int | None = None,
        delay_s: float = 0.0,
        poison_params_at: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.step = 0
        self.samples = 0
        self.nan_from = nan_from
        self.delay_s = delay_s
        self.poison_params_at = poison_params_at
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.true_w = torch.randn(DIM, generator=self.generator)
        self.model = torch.nn.Linear(DIM, 1)
        with torch.no_grad():
            self.model.weight.copy_(torch.randn(1, DIM, generator=self.generator))
            self.model.bias.zero_()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr * 30)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(BATCH, DIM, generator=self.generator)  # (B, D)
        noise = 0.1 * torch.randn(BATCH, generator=self.generator) + 0.01 * random.random() + 0.01 * np.random.rand()
        return x, x @ self.true_w + noise + 0.01 * torch.rand(())  # global torch RNG too

    def train_step(self) -> dict[str, float]:
        if self.delay_s:
            time.sleep(self.delay_s)
        x, y = self._batch()
        losses, norms, skipped = [], [], 0
        for _ in range(UPDATES):
            loss = ((self.model(x).squeeze(-1) - y) ** 2).mean()
            if self.nan_from is not None and self.step + 1 >= self.nan_from:
                loss = loss * float("nan")
            losses.append(float(loss.detach()))
            if not loss_is_finite(loss):
                skipped += 1
                continue
            loss.backward()
            applied, norm = clip_and_step(self.optimizer, self.model.parameters(), self.cfg.optim.max_grad_norm)
            skipped += not applied
            norms.append(norm)
        self.step += 1
        self.samples += BATCH
        if self.poison_params_at == self.step:
            with torch.no_grad():
                self.model.bias.fill_(float("nan"))
        return {
            "reward_mean": -losses[-1],
            "loss": sum(losses) / len(losses),
            "pg_loss": losses[0],
            "dipod_reg": 0.0,
            "elbo_mean": -losses[0],
            "ratio_mean": 1.0,
            "clip_frac": 0.0,
            "grad_norm": sum(norms) / len(norms) if norms else float("nan"),
            "skipped_updates": float(skipped),
            "updates": float(UPDATES),
        }

    def evaluate(self) -> dict[str, float]:
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(64, DIM, generator=g)
        with torch.no_grad():
            mse = float(((self.model(x).squeeze(-1) - x @ self.true_w) ** 2).mean())
        return {"eval/reward": -mse}

    def drift_probe(self) -> dict[str, float]:
        x, _ = self._batch()
        with torch.no_grad():
            spread = float(self.model(x).std())
        return {"drift/elbo": -spread, "drift/loglik": -spread / 2, "drift/gap": spread / 2, "drift/grad_cosine": 0.9}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "samples": self.samples,
        }

    def set_dipod_beta(self, beta: float) -> None:
        self.dipod_beta = beta

    def close(self) -> None:
        pass

    def load_state_dict(self, state: dict, *, restore_envs: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = state["step"]
        self.samples = state["samples"]
