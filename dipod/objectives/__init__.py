"""Policy-gradient objectives as pure functions, chosen by name through one registry.

Language objectives score completions from masked-token log-probabilities (``MaskedScores``, one
forward pass over all draws); control objectives from per-draw CFM losses. Each returns a
``LossOut`` whose ``elbo`` the DiPOD term reuses. A new method is a new function plus an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dipod.bounds.flow import cfm_elbo
from dipod.bounds.masked import MaskDraws, elbo_from_logprobs, eubo_from_logprobs
from dipod.objectives.diffu_grpo import diffu_grpo_loss
from dipod.objectives.dipod import dipod_term
from dipod.objectives.fpo_pp import fpo_pp_loss
from dipod.objectives.ratio_ppo import ratio_ppo_loss
from dipod.objectives.reference import elbo_difference_penalty, k3_kl
from dipod.objectives.spg import spg_loss
from dipod.types import LossOut

Domain = Literal["language", "control"]


@dataclass
class MaskedScores:
    """What one batched forward pass over K masking draws yields for B completions."""

    token_logp: torch.Tensor
    """(B, K, L) log p(x_i | noisy sequence) at the completion positions; only the masked ones are read (lean
    scoring, ``masked_token_logprobs(logits_at="masked")``, leaves the others 0)."""
    draws: MaskDraws
    """The draws that made the noisy sequences (stored with the rollout: common random numbers)."""
    valid: torch.Tensor
    """(B, L) bool completion positions that count."""

    def elbo(self, scale: str) -> torch.Tensor:
        """(B,) Monte-Carlo ELBO."""
        return elbo_from_logprobs(self.token_logp, self.draws, self.valid, scale=scale)


def _fpo_language(new: MaskedScores, old: MaskedScores, adv: torch.Tensor, cfg: Any) -> LossOut:
    return ratio_ppo_loss(
        new.elbo(cfg.elbo_scale), old.elbo(cfg.elbo_scale), adv, clip_low=cfg.clip_low, clip_high=cfg.clip_high
    )


def _spg_language(new: MaskedScores, old: MaskedScores | None, adv: torch.Tensor, cfg: Any) -> LossOut:
    elbo = new.elbo("mean")
    eubo = eubo_from_logprobs(new.token_logp, new.draws, new.valid, beta=cfg.eubo_beta, scale="mean")
    return spg_loss(elbo, eubo, adv, new.valid.sum(-1), mix_weight=cfg.mix_weight)


def _diffu_grpo_language(new: MaskedScores, old: MaskedScores, adv: torch.Tensor, cfg: Any) -> LossOut:
    # One-step log-probs: the draws mask the whole completion; average them over draws if K > 1.
    logp_new = new.token_logp.mean(1)  # (B, L)
    logp_old = old.token_logp.mean(1)
    return diffu_grpo_loss(logp_new, logp_old, adv, new.valid, clip_low=cfg.clip_low, clip_high=cfg.clip_high)


def _fpo_control(cfm_new: torch.Tensor, cfm_old: torch.Tensor, adv: torch.Tensor, cfg: Any) -> LossOut:
    # FPO's averaged ratio: exp(mean_N(l_old - l_new)) = exp(ELBO_new - ELBO_old).
    return ratio_ppo_loss(cfm_elbo(cfm_new), cfm_elbo(cfm_old), adv, clip_low=cfg.clip_low, clip_high=cfg.clip_high)


def _fpo_pp_control(cfm_new: torch.Tensor, cfm_old: torch.Tensor, adv: torch.Tensor, cfg: Any) -> LossOut:
    return fpo_pp_loss(
        cfm_new,
        cfm_old,
        adv,
        clip=cfg.clip_high,
        log_ratio_max=cfg.log_ratio_max,
        neg_adv_cfm_clamp=cfg.neg_adv_cfm_clamp,
        trust_region=cfg.trust_region,
    )


@dataclass(frozen=True)
class Objective:
    """A registered policy-gradient method."""

    name: str
    domain: Domain
    fn: Callable[..., LossOut]
    """(new, old, adv, cfg) -> LossOut; ``new``/``old`` are MaskedScores (language) or (B, N) CFM losses;
    ``old`` is None when ``uses_old`` is False."""
    draws: Literal["elbo", "one_step", "block_random", "flow"]
    """What noise the rollout must store for it."""
    uses_old: bool = True
    """Whether the loss compares with the rollout policy's scores (a ratio) on the same stored noise.
    SPG does not: it needs no old scores, and its release draws fresh masks for every inner update."""
    mean_over: Literal["rows", "tokens"] = "rows"
    """What the loss averages over: completions, or completion tokens (SPG's length-weighted mean,
    diffu-GRPO's token mean). It sets how micro-batches and processes combine into the loss of the whole
    batch, and how the DiPOD term averages (per token for "tokens")."""


OBJECTIVES: dict[Domain, dict[str, Objective]] = {
    "language": {
        "fpo": Objective("fpo", "language", _fpo_language, "elbo"),
        "spg": Objective("spg", "language", _spg_language, "block_random", uses_old=False, mean_over="tokens"),
        "diffu_grpo": Objective("diffu_grpo", "language", _diffu_grpo_language, "one_step", mean_over="tokens"),
    },
    "control": {
        "fpo": Objective("fpo", "control", _fpo_control, "flow"),
        "fpo_pp": Objective("fpo_pp", "control", _fpo_pp_control, "flow"),
    },
}


def get_objective(domain: Domain, name: str) -> Objective:
    """The registered objective ``name`` of ``domain``, or an error listing the choices."""
    try:
        return OBJECTIVES[domain][name]
    except KeyError:
        choices = ", ".join(sorted(OBJECTIVES.get(domain, {})))
        raise ValueError(f"unknown {domain} objective {name!r}; choose one of: {choices}") from None


__all__ = [
    "OBJECTIVES",
    "MaskedScores",
    "Objective",
    "diffu_grpo_loss",
    "dipod_term",
    "elbo_difference_penalty",
    "fpo_pp_loss",
    "get_objective",
    "k3_kl",
    "ratio_ppo_loss",
    "spg_loss",
]
