"""Policy-gradient objectives as pure functions, chosen by name through one registry.

Language objectives score completions from masked-token log-probabilities (``MaskedScores``, one
forward pass over all draws); control objectives from per-draw CFM losses (or, for the Gaussian
baseline's PPO, exact log-likelihoods). Each returns a ``LossOut`` whose ``elbo`` the DiPOD term
reuses. A new method is one file (its loss and its params model) plus an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import Field

from dipod.bounds.flow import cfm_elbo
from dipod.bounds.masked import MaskDraws, elbo_from_logprobs, eubo_from_logprobs
from dipod.objectives.diffu_grpo import DiffuGrpoParams, diffu_grpo_loss
from dipod.objectives.dipod import dipod_term
from dipod.objectives.fpo_pp import FpoPPParams, fpo_pp_loss
from dipod.objectives.params import ObjectiveParams
from dipod.objectives.ratio_ppo import FpoFlowParams, FpoParams, PpoParams, ratio_ppo_loss
from dipod.objectives.reference import elbo_difference_penalty, elbo_k3_kl, k3_kl
from dipod.objectives.spg import SpgParams, spg_loss
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


def _fpo_language(new: MaskedScores, old: MaskedScores, adv: torch.Tensor, p: FpoParams) -> LossOut:
    return ratio_ppo_loss(
        new.elbo(p.elbo_scale), old.elbo(p.elbo_scale), adv, clip_low=p.clip_low, clip_high=p.clip_high
    )


def _spg_language(new: MaskedScores, old: MaskedScores | None, adv: torch.Tensor, p: SpgParams) -> LossOut:
    elbo = new.elbo("mean")
    eubo = eubo_from_logprobs(new.token_logp, new.draws, new.valid, beta=p.eubo_beta, scale="mean")
    return spg_loss(elbo, eubo, adv, new.valid.sum(-1), mix_weight=p.mix_weight)


def _diffu_grpo_language(new: MaskedScores, old: MaskedScores, adv: torch.Tensor, p: DiffuGrpoParams) -> LossOut:
    # One-step log-probs: the draws mask the whole completion; average them over draws if K > 1.
    logp_new = new.token_logp.mean(1)  # (B, L)
    logp_old = old.token_logp.mean(1)
    return diffu_grpo_loss(logp_new, logp_old, adv, new.valid, clip_low=p.clip_low, clip_high=p.clip_high)


def _fpo_control(cfm_new: torch.Tensor, cfm_old: torch.Tensor, adv: torch.Tensor, p: FpoFlowParams) -> LossOut:
    # FPO's averaged ratio: exp(mean_N(l_old - l_new)) = exp(ELBO_new - ELBO_old).
    return ratio_ppo_loss(cfm_elbo(cfm_new), cfm_elbo(cfm_old), adv, clip_low=p.clip_low, clip_high=p.clip_high)


def _fpo_pp_control(cfm_new: torch.Tensor, cfm_old: torch.Tensor, adv: torch.Tensor, p: FpoPPParams) -> LossOut:
    return fpo_pp_loss(
        cfm_new,
        cfm_old,
        adv,
        clip=p.clip_high,
        log_ratio_max=p.log_ratio_max,
        neg_adv_cfm_clamp=p.neg_adv_cfm_clamp,
        cfm_loss_clamp=p.cfm_loss_clamp,
        trust_region=p.trust_region,
    )


def _ppo_control(loglik_new: torch.Tensor, loglik_old: torch.Tensor, adv: torch.Tensor, p: PpoParams) -> LossOut:
    out = ratio_ppo_loss(loglik_new, loglik_old, adv, clip_low=p.clip_low, clip_high=p.clip_high)
    return LossOut(out.loss, out.stats)  # an exact log-likelihood is no ELBO: nothing for DiPOD to reuse


@dataclass(frozen=True)
class Objective:
    """A registered policy-gradient method."""

    name: str
    domain: Domain
    fn: Callable[..., LossOut]
    """(new, old, adv, params) -> LossOut; ``new``/``old`` are MaskedScores (language), (B, N) CFM losses
    (flow policies) or (B,) exact log-likelihoods (``ppo``); ``old`` is None when ``uses_old`` is False."""
    params: type[ObjectiveParams]
    """Its settings: the ``objective:`` section of a run config that names it."""
    draws: Literal["elbo", "one_step", "block_random", "flow", "none"]
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
        "fpo": Objective("fpo", "language", _fpo_language, FpoParams, "elbo"),
        "spg": Objective(
            "spg", "language", _spg_language, SpgParams, "block_random", uses_old=False, mean_over="tokens"
        ),
        "diffu_grpo": Objective(
            "diffu_grpo", "language", _diffu_grpo_language, DiffuGrpoParams, "one_step", mean_over="tokens"
        ),
    },
    "control": {
        "fpo": Objective("fpo", "control", _fpo_control, FpoFlowParams, "flow"),
        "fpo_pp": Objective("fpo_pp", "control", _fpo_pp_control, FpoPPParams, "flow"),
        "ppo": Objective("ppo", "control", _ppo_control, PpoParams, "none"),
    },
}


def get_objective(domain: Domain, name: str) -> Objective:
    """The registered objective ``name`` of ``domain``, or an error listing the choices."""
    try:
        return OBJECTIVES[domain][name]
    except KeyError:
        choices = ", ".join(sorted(OBJECTIVES.get(domain, {})))
        raise ValueError(f"unknown {domain} objective {name!r}; choose one of: {choices}") from None


def objective_params(domain: Domain) -> Any:
    """The type of a ``domain`` run config's ``objective`` section: the registered params models, told
    apart by ``name``."""
    models = tuple(o.params for o in OBJECTIVES[domain].values())
    return Annotated[Union[models], Field(discriminator="name")]  # noqa: UP007 (a runtime tuple of types)


__all__ = [
    "OBJECTIVES",
    "MaskedScores",
    "Objective",
    "ObjectiveParams",
    "diffu_grpo_loss",
    "dipod_term",
    "elbo_difference_penalty",
    "elbo_k3_kl",
    "fpo_pp_loss",
    "get_objective",
    "k3_kl",
    "objective_params",
    "ratio_ppo_loss",
    "spg_loss",
]


def make_params(domain: Domain, name: str, **settings: Any) -> ObjectiveParams:
    """The settings of objective ``name`` of ``domain`` with ``settings`` over its defaults (validated)."""
    return get_objective(domain, name).params(name=name, **settings)


def check_objective_name(domain: Domain, name: Any) -> None:
    """Raise a ValueError naming ``objective.name`` and the choices unless ``name`` is a ``domain`` objective."""
    if name not in OBJECTIVES[domain]:
        choices = ", ".join(sorted(OBJECTIVES[domain]))
        raise ValueError(f"objective.name = {name!r} is not a {domain} objective; choose one of: {choices}")


def with_objective_name(data: Any, domain: Domain, default: str) -> Any:
    """Raw run-config ``data`` with ``objective.name`` set to ``default`` where it is missing, and checked.

    Also an error naming the section when ``data`` lacks its domain's section (``language:`` or ``control:``).
    """
    if not isinstance(data, dict):
        return data
    if data.get(domain) is None:
        raise ValueError(f"domain is {domain!r} but the `{domain}` section is missing")
    objective = data.get("objective", {})
    if not isinstance(objective, dict):
        return data  # pydantic names the wrong type
    objective = {"name": default, **objective}
    check_objective_name(domain, objective["name"])
    return {**data, "objective": objective}
