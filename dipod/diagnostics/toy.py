"""The two-token toy: a masked diffusion model small enough that log pi, the ELBO and their gap are exact.

A completion is x = (x1, x2) over V symbols (no prompt); the mask token is id V. A general masked
diffusion model over two positions predicts each position from the other position's state (a
symbol or the mask), so two tables of logits describe it completely:

    logits of x1 = W1[state of position 2],   logits of x2 = W2[state of position 1],   W*: (V + 1, V).

With L = 2 there are two unmasking orders, so (exactly)

    pi(x)   = 1/2 p(x1 | M M) p(x2 | x1 M) + 1/2 p(x2 | M M) p(x1 | M x2),
    ELBO(x) = 1/2 [log p(x1 | M M) p(x2 | x1 M)] + 1/2 [log p(x2 | M M) p(x1 | M x2)]   (Jensen),

and the count-scheme ELBO (n uniform on {1, 2} masked tokens, weight L / n) is that same average.
The toy computes both through the core bounds (``exact_loglik`` and ``elbo_from_logprobs`` on
enumerated draws), so it also checks them. A zero table is the uniform, context-free model: its two
orders agree and the bound is tight (gap 0), like a well-pretrained model.

Training samples from pi exactly, scores V^2 outcomes with a fixed reward table and follows a
registered language objective (FPO, SPG) with the DiPOD term optional; every quantity that the
figure shows is an exact expectation under pi, not an estimate.

Shape legend: B batch of samples, K enumerated draws (4), V symbols, O = V^2 outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dipod.advantages import group_advantages
from dipod.bounds.masked import MaskDraws, elbo_from_logprobs, exact_loglik, masked_token_logprobs
from dipod.diagnostics.drift import grad_cosine, true_pg_loss
from dipod.objectives import MaskedScores, dipod_term, get_objective, make_params

LENGTH = 2


class TwoTokenModel(torch.nn.Module):
    """The general masked diffusion model over two positions: one logit table per position."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.mask_id = vocab
        # Row s of w1 gives the logits of x1 when position 2 holds s (s = V: masked); zeros = uniform.
        self.w1 = torch.nn.Parameter(torch.zeros(vocab + 1, vocab))
        self.w2 = torch.nn.Parameter(torch.zeros(vocab + 1, vocab))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 2) ids in [0, V] -> (N, 2, V) logits (the logsumexp of a row is its normaliser)."""
        logits1 = self.w1[input_ids[:, 1]]  # (N, V)
        logits2 = self.w2[input_ids[:, 0]]  # (N, V)
        return torch.stack([logits1, logits2], dim=1)


def all_outcomes(vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(O, 2) every completion (x1, x2), row index x1 * V + x2."""
    grid = torch.cartesian_prod(torch.arange(vocab, device=device), torch.arange(vocab, device=device))
    return grid.reshape(-1, LENGTH)


def enumerated_draws(batch: int, device: torch.device | str = "cpu") -> MaskDraws:
    """The count scheme's masks written out with their probabilities, as K = 4 equally likely draws.

    n = 1 (prob 1/2) masks position 1 or 2 (1/4 each) with weight L / n = 2; n = 2 (prob 1/2) masks
    both with weight 1. Writing the n = 2 draw twice makes the plain mean over draws the expectation.
    """
    mask = torch.tensor([[True, False], [False, True], [True, True], [True, True]], device=device)
    weight = torch.tensor([2.0, 2.0, 1.0, 1.0], device=device)
    t = torch.tensor([0.5, 0.5, 1.0, 1.0], device=device)
    return MaskDraws(mask=mask.expand(batch, -1, -1), weight=weight.expand(batch, -1), t=t.expand(batch, -1))


def _empty_prompt(batch: int, device: torch.device | str) -> torch.Tensor:
    return torch.zeros(batch, 0, dtype=torch.long, device=device)


def scores(model: TwoTokenModel, completions: torch.Tensor) -> MaskedScores:
    """Masked-token log-probabilities of ``completions`` (B, 2) under the 4 enumerated draws."""
    batch = completions.shape[0]
    draws = enumerated_draws(batch, completions.device)
    token_logp = masked_token_logprobs(
        model, _empty_prompt(batch, completions.device), completions, draws, mask_id=model.mask_id
    )  # (B, 4, 2)
    return MaskedScores(token_logp, draws, torch.ones_like(completions, dtype=torch.bool))


def exact_elbo(model: TwoTokenModel, completions: torch.Tensor) -> torch.Tensor:
    """(B,) the count-scheme ELBO in closed form (the expectation over all masks)."""
    s = scores(model, completions)
    return elbo_from_logprobs(s.token_logp, s.draws, s.valid, scale="sum")


def loglik(model: TwoTokenModel, completions: torch.Tensor) -> torch.Tensor:
    """(B,) exact log pi(x): log of the mean over both orders of the any-order AR likelihood."""
    batch = completions.shape[0]
    return exact_loglik(model, _empty_prompt(batch, completions.device), completions, mask_id=model.mask_id)


def sample(model: TwoTokenModel, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 2) exact samples from pi (categorical over the V^2 enumerated outcomes)."""
    outcomes = all_outcomes(model.vocab)
    with torch.no_grad():
        probs = loglik(model, outcomes).exp()  # (O,)
    index = torch.multinomial(probs, batch, replacement=True, generator=generator)
    return outcomes[index]


def reward_table(vocab: int, kind: str = "match") -> torch.Tensor:
    """(V, V) expected reward of each outcome.

    - ``match``: 1 when x1 == x2, else 0. Every matching pair is optimal, so the optimum keeps its
      entropy and needs correlated conditionals, which a context-free model cannot represent.
    - ``match_bonus``: ``match`` plus 0.5 for the single outcome (0, 0): a unique, deterministic optimum.
    """
    table = torch.eye(vocab)
    if kind == "match_bonus":
        table[0, 0] += 0.5
    elif kind != "match":
        raise ValueError(f"unknown reward table {kind!r}; expected 'match' or 'match_bonus'")
    return table


def draw_rewards(
    table: torch.Tensor, completions: torch.Tensor, *, noisy: bool, generator: torch.Generator
) -> torch.Tensor:
    """(B,) rewards of sampled completions: the table's value, or with ``noisy`` a Bernoulli reward with
    success probability 0.2 + 0.6 * value / max, so that advantages stay non-zero at the optimum (as
    verifiable rewards do when the policy is not perfect)."""
    value = table[completions[:, 0], completions[:, 1]]  # (B,)
    if not noisy:
        return value
    return torch.bernoulli(0.2 + 0.6 * value / table.max(), generator=generator)


@dataclass
class ExactStats:
    """Exact expectations under pi at the current parameters."""

    reward: float
    """E_pi[r]."""
    gap: float
    """E_pi[log pi - ELBO], the on-policy gap."""
    gap_max: float
    """max over outcomes of log pi - ELBO."""
    loglik: float
    """E_pi[log pi] (minus the entropy)."""
    elbo: float
    """E_pi[ELBO]."""


def exact_stats(model: TwoTokenModel, rewards: torch.Tensor) -> ExactStats:
    """Exact on-policy reward, gap and bound over all V^2 outcomes."""
    outcomes = all_outcomes(model.vocab)
    with torch.no_grad():
        ll = loglik(model, outcomes)  # (O,)
        elbo = exact_elbo(model, outcomes)
        probs = ll.exp()
        gaps = ll - elbo
        return ExactStats(
            reward=float(probs @ rewards.reshape(-1)),
            gap=float(probs @ gaps),
            gap_max=float(gaps.max()),
            loglik=float(probs @ ll),
            elbo=float(probs @ elbo),
        )


@dataclass
class ToyConfig:
    """One toy training run."""

    objective: str = "fpo"
    """Registered language objective: fpo | spg."""
    beta: float = 0.0
    """DiPOD weight (0 = the plain baseline)."""
    vocab: int = 4
    batch: int = 16
    """Samples per step, one group for the advantages."""
    steps: int = 300
    num_iterations: int = 4
    """Inner updates per batch (the ratio uses the batch's ELBO as old)."""
    lr: float = 0.05
    seed: int = 0
    reward: str = "match"
    """Reward table kind (``reward_table``)."""
    noisy: bool = False
    """Bernoulli rewards around the table (``draw_rewards``)."""
    objective_kw: dict[str, Any] = field(default_factory=dict)
    """Overrides of the objective settings (clip_low, clip_high, mix_weight, eubo_beta)."""


TOY_DEFAULTS: dict[str, dict[str, Any]] = {"spg": {"eubo_beta": 1.0}}
"""The toy's settings where they differ from an objective's defaults (SPG's EUBO power: 1 on two tokens)."""


def dipod_weights(objective: str, valid: torch.Tensor) -> torch.Tensor | None:
    """SPG's per-token ELBO is averaged with length weights (as its loss is); FPO's plain mean."""
    return valid.sum(-1).float() if objective == "spg" else None


def train_toy(cfg: ToyConfig, *, beta_fn: Any = None) -> list[dict[str, float]]:
    """Train the toy and return one row of exact statistics per step (row 0 is the initial model).

    ``beta_fn(step, stats_row, beta) -> beta`` may adapt the DiPOD weight between steps (adaptive beta).
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    model = TwoTokenModel(cfg.vocab)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    objective = get_objective("language", cfg.objective)
    settings = make_params("language", cfg.objective, **{**TOY_DEFAULTS.get(cfg.objective, {}), **cfg.objective_kw})
    rewards = reward_table(cfg.vocab, cfg.reward)
    beta = cfg.beta
    rows = []
    for step in range(cfg.steps + 1):
        stats = exact_stats(model, rewards)
        row = {
            "step": step,
            "reward": stats.reward,
            "gap": stats.gap,
            "gap_max": stats.gap_max,
            "loglik": stats.loglik,
            "elbo": stats.elbo,
            "beta": beta,
        }
        completions = sample(model, cfg.batch, generator)  # (B, 2)
        adv = group_advantages(draw_rewards(rewards, completions, noisy=cfg.noisy, generator=generator), cfg.batch)
        old = scores(model, completions)
        old = MaskedScores(old.token_logp.detach(), old.draws, old.valid)
        # Gradient cosine at the rollout point: the proxy PG loss (rho = 1) vs -mean(A log pi);
        # NaN when every advantage is zero (no gradient, no direction).
        row["grad_cosine"] = grad_cosine(
            objective.fn(scores(model, completions), old, adv, settings).loss,
            true_pg_loss(loglik(model, completions), adv),
            params,
        )
        rows.append(row)
        if step == cfg.steps:
            break
        for _ in range(cfg.num_iterations):
            new = scores(model, completions)
            out = objective.fn(new, old, adv, settings)
            loss = out.loss
            if beta > 0:
                loss = loss + dipod_term(out.elbo, beta, dipod_weights(cfg.objective, new.valid)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if beta_fn is not None:
            beta = beta_fn(step, row, beta)
    return rows
