"""Health signals of an RL run and an alarm that flags a collapsing one.

A diffusion policy-gradient run can collapse: in the FPO release on MATH500 the policy ends up emitting
only EOS, with ~0 effective tokens and ~0 accuracy, hundreds of steps after the reward curve last looked
fine (the DiPOD paper). The signals here are cheap statistics of what every rollout already has,
so a trainer can log them every step and stop a run before it wastes a week of compute:

- effective tokens: mean scored completion length, and its drop from the run's start;
- ``zero_std_ratio`` (TRL's name): fraction of groups whose rewards are all equal, i.e. groups that
  give the policy gradient nothing to learn from;
- degenerate outputs: completions that are empty (only EOS/padding), one token repeated ("!!!!"), or
  identical to every other completion of their group;
- token NLL and confidence: mean -log p and mean p of the chosen tokens at the masked positions of the
  scoring pass; the NLL estimates the per-token entropy of the policy's choices, so a drop towards 0
  means the policy has turned (near-)deterministic;
- ELBO per token: the bound divided by the scored length; "runaway" is a large move from its start.

Functions are pure (tensors in, tensors out, no loops over rows). ``health_signals`` gathers them for one
rollout batch; ``CollapseAlarm`` keeps the run-start references, compares with ``HealthConfig``'s
thresholds and is resumable through ``state_dict`` / ``load_state_dict``.

Shape legend: B completions (prompts x G, the G completions of a prompt in contiguous rows), G group
size, K scoring draws, L completion length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch

from dipod.bounds.masked import completion_valid_mask
from dipod.config import HealthConfig

REWARD_ATOL = 1e-6
"""Rewards closer than this count as equal: float32 rounding of a group mean is ~1e-7 for rewards in [0, 10],
while a real reward difference (a fraction of cells, a format bonus) is orders of magnitude larger."""


# ---------------------------------------------------------------------------------------------- signals


def effective_tokens(valid: torch.Tensor) -> torch.Tensor:
    """() mean number of scored tokens per completion.

    Args:
        valid: (B, L) bool, the completion positions the objective scores.
    """
    return valid.sum(-1).float().mean()


def relative_drop(value: float, reference: float) -> float:
    """1 - value / reference: the fraction a positive quantity has fallen since the reference (negative if it
    rose); NaN when the reference is 0 or not finite, since no fraction of nothing can be lost."""
    if not (math.isfinite(reference) and reference > 0 and math.isfinite(value)):
        return math.nan
    return 1.0 - value / reference


def _groups(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, ...) -> (B / G, G, ...): the trainer lays out the G completions of a prompt in contiguous rows."""
    if group_size < 1 or values.shape[0] % group_size:
        raise ValueError(f"batch of {values.shape[0]} rows does not split into groups of {group_size}")
    return values.reshape(values.shape[0] // group_size, group_size, *values.shape[1:])


def zero_std_ratio(rewards: torch.Tensor, group_size: int, *, atol: float = REWARD_ATOL) -> torch.Tensor:
    """() fraction of groups whose rewards are all equal (max - min <= ``atol``).

    Such a group has zero group-relative advantage for every completion: it contributes nothing to the
    policy gradient. Group-centred advantages (with or without std normalisation) can be passed instead
    of rewards: equal rewards give equal advantages (spread 0, even where float rounding of the group mean
    leaves them slightly off zero), and unequal rewards give unequal ones.

    Args:
        rewards: (B,) per-completion rewards.
    """
    grouped = _groups(rewards, group_size)  # (B/G, G)
    spread = grouped.amax(-1) - grouped.amin(-1)  # (B/G,)
    return (spread <= atol).float().mean()


@dataclass(frozen=True)
class Degenerate:
    """Per-completion degeneracy flags, each (B,) bool."""

    empty: torch.Tensor
    """No content token: the completion is only EOS and/or padding (the release's FPO collapse)."""
    repeated: torch.Tensor
    """At least ``min_repeat_length`` content tokens, all the same token ("!!!!", SPG's collapse)."""
    group_identical: torch.Tensor
    """Its content equals that of every other completion of its group (G >= 2): the group has one output."""

    def any(self, *, group_identical: bool = True) -> torch.Tensor:
        """(B,) bool: degenerate in any way (group-identical counted only if ``group_identical``)."""
        out = self.empty | self.repeated
        return out | self.group_identical if group_identical else out


def content_mask(completion_ids: torch.Tensor, eos_id: int | None, pad_id: int | None = None) -> torch.Tensor:
    """(B, L) bool: the content of each completion, i.e. tokens before its first EOS that are not padding."""
    return completion_valid_mask(completion_ids, eos_id, pad_id, include_eos=False)


def degenerate_outputs(
    completion_ids: torch.Tensor,
    group_size: int,
    *,
    eos_id: int | None,
    pad_id: int | None = None,
    min_repeat_length: int = 2,
) -> Degenerate:
    """Flag empty, single-token-repeated and group-identical completions.

    A completion's content is its tokens before the first EOS that are not padding (what the reward reads).

    Args:
        completion_ids: (B, L) long, G completions per prompt in contiguous rows.
        eos_id, pad_id: the tokenizer's ids (None: the tokenizer has no such token).
        min_repeat_length: fewest content tokens for "one token repeated"; 2 by default, since a single
            token is trivially "repeated" and a one-token answer can be right.
    """
    content = content_mask(completion_ids, eos_id, pad_id)  # (B, L)
    length = content.sum(-1)  # (B,)
    empty = length == 0
    first = content.float().argmax(-1, keepdim=True)  # (B, 1) position of the first content token
    first_token = completion_ids.gather(-1, first)  # (B, 1)
    same = (completion_ids == first_token) | ~content  # (B, L)
    repeated = same.all(-1) & (length >= min_repeat_length)
    if group_size >= 2:
        text = _groups(completion_ids.masked_fill(~content, -1), group_size)  # (B/G, G, L), -1 off content
        identical = (text == text[:, :1]).all(-1).all(-1)  # (B/G,)
        group_identical = identical.repeat_interleave(group_size)  # (B,)
    else:
        group_identical = torch.zeros_like(empty)
    return Degenerate(empty=empty, repeated=repeated, group_identical=group_identical)


def token_nll_and_confidence(
    token_logp: torch.Tensor, draw_mask: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """() mean -log p and mean p of the chosen tokens over the scored (masked and valid) positions.

    The scoring pass predicts each masked completion token from the rest; averaged over the rollout, the
    NLL of the tokens the sampler chose estimates the per-token entropy of the policy's conditionals (its
    cross-entropy with the sampler's choices, exactly the entropy when both are the same distribution). A
    policy that has turned deterministic drives it to 0 and the confidence to 1. NaN when nothing is scored.

    Args:
        token_logp: (B, K, L) log p(x_i | noisy sequence) of the completion tokens, e.g. the old policy's
            ``RolloutBatch.old_logp``.
        draw_mask: (B, K, L) bool, the positions each draw masked (``MaskDraws.mask``).
        valid: (B, L) bool, the scored completion positions.
    """
    counted = draw_mask & valid[:, None, :]  # (B, K, L)
    logp = token_logp.detach().float()
    zero = torch.zeros_like(logp)
    n = counted.sum()
    nll = -torch.where(counted, logp, zero).sum() / n  # 0 / 0 -> NaN when nothing is scored
    confidence = torch.where(counted, logp.exp(), zero).sum() / n
    return nll, confidence


def elbo_per_token(
    elbo: torch.Tensor, valid: torch.Tensor, *, elbo_scale: Literal["sum", "mean"] = "sum"
) -> torch.Tensor:
    """() ELBO per scored token over the batch: sum_b ELBO_b / sum_b L_b, with ELBO_b the sequence bound.

    A token-weighted mean, so it is the same quantity whatever the completion lengths, and comparable
    across steps while lengths change.

    Args:
        elbo: (B,) per-sample ELBO; ``elbo_scale`` says whether it is the sequence sum (d1/FPO) or
            already divided by the valid length (SPG).
        valid: (B, L) bool, the scored positions.
    """
    if elbo_scale not in ("sum", "mean"):
        raise ValueError(f"unknown ELBO scale {elbo_scale!r}; expected 'sum' or 'mean'")
    lengths = valid.sum(-1).to(elbo.dtype)  # (B,)
    seq = elbo.detach() if elbo_scale == "sum" else elbo.detach() * lengths  # (B,) sequence-level
    return seq.sum() / lengths.sum()  # NaN for an all-empty batch: no token to average over


@dataclass(frozen=True)
class HealthSignals:
    """One rollout batch's health signals as plain floats (NaN where the inputs were not given)."""

    effective_tokens: float
    zero_std_ratio: float
    empty_frac: float
    repeat_frac: float
    group_identical_frac: float
    degenerate_frac: float
    """Fraction of completions that are empty, repeated or (if counted) group-identical."""
    token_nll: float
    token_confidence: float
    elbo_per_token: float

    def metrics(self) -> dict[str, float]:
        """The signals under their run-directory keys, ``health/<signal>``."""
        return {f"health/{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_metrics(cls, row: dict[str, Any]) -> HealthSignals | None:
        """The signals a metrics row carries (``metrics()``'s keys; null values read as NaN), or None if it has none."""
        names = [f.name for f in fields(cls)]
        if not all(f"health/{name}" in row for name in names):
            return None
        values = [row[f"health/{name}"] for name in names]
        return cls(*(math.nan if v is None else float(v) for v in values))


@torch.no_grad()
def health_signals(
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    eos_id: int | None,
    pad_id: int | None = None,
    token_logp: torch.Tensor | None = None,
    draw_mask: torch.Tensor | None = None,
    elbo: torch.Tensor | None = None,
    elbo_scale: Literal["sum", "mean"] = "sum",
    group_identical_is_degenerate: bool = True,
) -> HealthSignals:
    """All health signals of one rollout batch, with one device-to-host copy.

    Args:
        completion_ids: (B, L) long, G completions per prompt in contiguous rows.
        valid: (B, L) bool, scored positions. rewards: (B,) (or group-centred advantages).
        token_logp: (B, K, L) token log-probs of the scoring pass (e.g. ``old_logp``) with ``draw_mask``
            (B, K, L) bool; None leaves ``token_nll`` / ``token_confidence`` NaN.
        elbo: (B,) per-sample ELBO at ``elbo_scale``; None leaves ``elbo_per_token`` NaN.
    """
    nan = torch.tensor(math.nan, device=valid.device)
    deg = degenerate_outputs(completion_ids, group_size, eos_id=eos_id, pad_id=pad_id)
    nll, confidence = nan, nan
    if token_logp is not None:
        if draw_mask is None:
            raise ValueError("token_logp needs draw_mask, the (B, K, L) positions the draws masked")
        nll, confidence = token_nll_and_confidence(token_logp, draw_mask, valid)
    per_token = nan if elbo is None else elbo_per_token(elbo, valid, elbo_scale=elbo_scale).float()
    values = torch.stack([
        effective_tokens(valid),
        zero_std_ratio(rewards.float(), group_size),
        deg.empty.float().mean(),
        deg.repeated.float().mean(),
        deg.group_identical.float().mean(),
        deg.any(group_identical=group_identical_is_degenerate).float().mean(),
        nll.float(),
        confidence.float(),
        per_token,
    ]).tolist()  # fmt: skip
    return HealthSignals(*values)


# ---------------------------------------------------------------------------------------------- alarm


SIGNALS = ("tokens_drop", "zero_std", "degenerate", "nll_drop", "elbo_shift")
"""Alarm signal names, in the order they are checked and reported."""


@dataclass
class RunStartReference:
    """Mean of the first N finite values of one signal: the run-start reference (NaN values are skipped)."""

    total: float = 0.0
    count: int = 0

    def add(self, value: float, steps: int) -> None:
        if self.count < steps and math.isfinite(value):
            self.total += value
            self.count += 1

    def value(self, steps: int) -> float:
        """The reference once ``steps`` values were seen, NaN before."""
        return self.total / self.count if self.count >= steps else math.nan


@dataclass(frozen=True)
class AlarmReport:
    """What the alarm says after one step."""

    metrics: dict[str, float]
    """``health/<signal>`` values, the relative ones (``health/effective_tokens_drop``,
    ``health/token_nll_drop``, ``health/elbo_shift``), the pooled ``health/zero_std_pooled`` (mean over
    ``zero_std_window`` steps), ``health/alarms`` (signals firing now) and
    ``health/collapsed`` (1.0 from the first step any signal fired on)."""
    fired: tuple[str, ...]
    """Signals firing at this step (names from ``SIGNALS``)."""
    collapsed: bool
    """Whether any signal has fired so far in the run (sticky)."""
    collapsed_at: int | None
    """The step (0-based count of ``update`` calls) at which the run was first flagged, if it was."""

    def describe(self) -> str:
        """A short flag for the progress line: "" while healthy, else e.g. "COLLAPSED@12 [zero_std]"."""
        if not self.collapsed:
            return ""
        return (
            f"COLLAPSED@{self.collapsed_at} [{', '.join(self.fired)}]"
            if self.fired
            else f"COLLAPSED@{self.collapsed_at}"
        )


class CollapseAlarm:
    """Flags a collapsing run from each step's ``HealthSignals`` (stateful, resumable).

    Call ``update(signals)`` once per training step; log ``report.metrics``. The alarm keeps the run-start
    references, a per-signal count of consecutive steps past threshold, and the step and signals of the first
    collapse, all in ``state_dict()``, so a resumed run reports the same flags at the same steps.
    """

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        self.step = 0
        self.refs = {key: RunStartReference() for key in ("effective_tokens", "token_nll", "elbo_per_token")}
        self.streak = dict.fromkeys(SIGNALS, 0)
        self.collapsed_at: int | None = None
        self.collapse_signals: tuple[str, ...] = ()
        self.zero_std_recent: list[float] = []
        """The last ``zero_std_window`` finite ``zero_std_ratio`` values."""

    def _zero_std_pooled(self, ratio: float) -> float:
        """Mean equal-rewards fraction over the last ``zero_std_window`` steps; NaN until that many were seen."""
        if math.isfinite(ratio):
            self.zero_std_recent = [*self.zero_std_recent, ratio][-self.cfg.zero_std_window :]
        full = len(self.zero_std_recent) == self.cfg.zero_std_window
        return sum(self.zero_std_recent) / len(self.zero_std_recent) if full else math.nan

    def _past(self, signals: HealthSignals, rel: dict[str, float]) -> dict[str, bool]:
        """Which signals are past their thresholds at this step (NaN never is)."""
        c = self.cfg
        checks = {
            "tokens_drop": (rel["health/effective_tokens_drop"], c.max_tokens_drop),
            "zero_std": (rel["health/zero_std_pooled"], c.max_zero_std_ratio),
            "degenerate": (signals.degenerate_frac, c.max_degenerate_frac),
            "nll_drop": (rel["health/token_nll_drop"], c.max_nll_drop),
            "elbo_shift": (abs(rel["health/elbo_shift"]), c.max_elbo_shift),
        }
        return {name: limit is not None and value > limit for name, (value, limit) in checks.items()}

    def update(self, signals: HealthSignals) -> AlarmReport:
        """Take one step's signals; return its metrics and flags."""
        n = self.cfg.reference_steps
        for key, ref in self.refs.items():
            ref.add(getattr(signals, key), n)
        tokens_ref, nll_ref, elbo_ref = (
            self.refs[k].value(n) for k in ("effective_tokens", "token_nll", "elbo_per_token")
        )
        rel = {
            "health/effective_tokens_drop": relative_drop(signals.effective_tokens, tokens_ref),
            "health/token_nll_drop": relative_drop(signals.token_nll, nll_ref),
            "health/elbo_shift": signals.elbo_per_token - elbo_ref,  # NaN until the reference exists
            "health/zero_std_pooled": self._zero_std_pooled(signals.zero_std_ratio),
        }
        past = self._past(signals, rel)
        for name in SIGNALS:
            self.streak[name] = self.streak[name] + 1 if past[name] else 0
        fired = tuple(name for name in SIGNALS if self.streak[name] >= self.cfg.patience)
        if fired and self.collapsed_at is None:
            self.collapsed_at, self.collapse_signals = self.step, fired
        self.step += 1
        collapsed = self.collapsed_at is not None
        metrics = {
            **signals.metrics(),
            **rel,
            "health/alarms": float(len(fired)),
            "health/collapsed": float(collapsed),
        }
        return AlarmReport(metrics=metrics, fired=fired, collapsed=collapsed, collapsed_at=self.collapsed_at)

    def summary(self) -> dict[str, Any]:
        """For ``summary.json``: whether and when the run collapsed, and which signals fired first."""
        return {"collapsed": self.collapsed_at is not None, "step": self.collapsed_at, "signals": self.collapse_signals}

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON- and torch.save-safe)."""
        return {
            "step": self.step,
            "refs": {k: {"total": r.total, "count": r.count} for k, r in self.refs.items()},
            "streak": dict(self.streak),
            "collapsed_at": self.collapsed_at,
            "collapse_signals": list(self.collapse_signals),
            "zero_std_recent": list(self.zero_std_recent),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``."""
        self.step = int(state["step"])
        self.refs = {k: RunStartReference(float(v["total"]), int(v["count"])) for k, v in state["refs"].items()}
        self.streak = {name: int(state["streak"][name]) for name in SIGNALS}
        self.collapsed_at = state["collapsed_at"]
        self.collapse_signals = tuple(state["collapse_signals"])
        self.zero_std_recent = [float(v) for v in state.get("zero_std_recent", [])]  # absent before the window


__all__ = [
    "SIGNALS",
    "AlarmReport",
    "CollapseAlarm",
    "Degenerate",
    "HealthConfig",
    "HealthSignals",
    "RunStartReference",
    "content_mask",
    "degenerate_outputs",
    "effective_tokens",
    "elbo_per_token",
    "health_signals",
    "relative_drop",
    "token_nll_and_confidence",
    "zero_std_ratio",
]
