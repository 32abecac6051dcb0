"""What one RL step of the language trainer carries: sampled groups, and the rollout batch the updates read.

Shape legend: B completions on this process (prompts x G), P prompt length, L completion length, K draws.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from dipod.bounds.masked import MaskDraws
from dipod.language.rollout import Decoded, common_padding


@dataclass
class Samples:
    """G completions for each of some prompts, scored by the task: what a rollout and a probe both start from."""

    prompt_ids: torch.Tensor
    """(B, P) long, left-padded."""
    prompt_attn: torch.Tensor
    """(B, P) bool."""
    decoded: Decoded
    """Completions (B, L), their valid masks, rewards, accuracy and NFE."""
    rewards: torch.Tensor
    """(B,) float."""
    adv: torch.Tensor
    """(B,) group-relative advantages."""


@dataclass
class RolloutBatch:
    """One process's rollout: completions, advantages, the stored draws and the old policy's scores."""

    prompt_ids: torch.Tensor
    """(B, P) long, left-padded."""
    prompt_attn: torch.Tensor
    """(B, P) bool."""
    completion_ids: torch.Tensor
    """(B, L) long."""
    valid: torch.Tensor
    """(B, L) bool: tokens up to and including the first EOS."""
    adv: torch.Tensor
    """(B,) group-relative advantages."""
    draws: MaskDraws
    """The objective's stored noise (common random numbers for old, new and reference)."""
    old_logp: torch.Tensor | None = None
    """(B, K, L) token log-probs of the rollout policy under ``draws``, no gradient."""
    ref_logp: torch.Tensor | None = None
    """(B, K, L) token log-probs of the reference policy under ``draws`` (kl_beta > 0)."""
    elbo_draws: MaskDraws | None = None
    """Separate ELBO draws when the objective computes no ELBO but DiPOD needs one (diffu-GRPO)."""

    def rows(self, idx: slice) -> RolloutBatch:
        """The sub-batch of rows ``idx`` (a micro-batch), without the prompt padding all of its rows share
        (``common_padding``): a micro-batch of one prompt's group carries no padding at all."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = None if value is None else value[idx]
        pad = common_padding(out["prompt_attn"])
        if pad:
            out["prompt_ids"], out["prompt_attn"] = out["prompt_ids"][:, pad:], out["prompt_attn"][:, pad:]
            for key in ("draws", "elbo_draws"):
                draws = out[key]
                if draws is not None and draws.prompt_mask is not None:  # (b, K, P) -> (b, K, P - pad)
                    out[key] = MaskDraws(draws.mask, draws.weight, draws.t, draws.prompt_mask[..., pad:])
        return RolloutBatch(**out)

    @property
    def attention(self) -> torch.Tensor:
        """(B, P + L) bool attention mask of prompt + completion."""
        return torch.cat([self.prompt_attn, torch.ones_like(self.valid)], dim=1)
