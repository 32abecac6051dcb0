"""Masked models small enough to enumerate, for checking bounds against exact likelihoods."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class MLPMaskedNet(nn.Module):
    """logits (N, T, V) from an MLP over the one-hot of the whole noisy sequence (mask id = V).

    With ``context_free`` the logits are a fixed table, so every conditional ignores the context.
    """

    def __init__(self, vocab: int, total_len: int, *, hidden: int = 32, context_free: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab, self.total_len, self.context_free = vocab, total_len, context_free
        self.table = nn.Parameter(torch.randn(total_len, vocab, generator=g))
        self.inp = nn.Parameter(torch.randn(total_len * (vocab + 1), hidden, generator=g) * 1.5)
        self.out = nn.Parameter(torch.randn(hidden, total_len * vocab, generator=g) * 1.5)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = ids.shape[0]
        if self.context_free:
            return self.table.expand(n, -1, -1)
        onehot = nn.functional.one_hot(ids, self.vocab + 1).to(self.inp.dtype).reshape(n, -1)  # (N, T*(V+1))
        return (torch.tanh(onehot @ self.inp) @ self.out).view(n, self.total_len, self.vocab) + self.table


class JointMaskedNet(nn.Module):
    """Conditionals of one joint distribution q over V^L completions (prompt ignored): consistent by construction.

    p(x_i = v | revealed tokens) = q(x_i = v | revealed), so every order's AR product equals q(x).
    """

    def __init__(self, vocab: int, length: int, prompt_len: int, *, seed: int = 0, sharpness: float = 2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab, self.length, self.prompt_len = vocab, length, prompt_len
        self.states = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # (S, L)
        self.log_q = torch.log_softmax(sharpness * torch.randn(len(self.states), generator=g), 0)  # (S,)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        completion = ids[:, self.prompt_len :]  # (N, L)
        revealed = completion != self.vocab  # (N, L)
        agree = (self.states[None] == completion[:, None]) | ~revealed[:, None]  # (N, S, L)
        log_w = self.log_q[None] + torch.log(agree.all(-1).float())  # (N, S)
        onehot = nn.functional.one_hot(self.states, self.vocab).float()  # (S, L, V)
        probs = torch.einsum("ns,slv->nlv", log_w.softmax(-1), onehot)  # (N, L, V)
        logits = torch.log(probs.clamp(min=1e-30))
        pad = torch.zeros(ids.shape[0], self.prompt_len, self.vocab)
        return torch.cat([pad, logits], 1)

    def log_q_of(self, completion: torch.Tensor) -> torch.Tensor:
        """(B,) log q(x) of completions (B, L)."""
        index = (completion * self.vocab ** torch.arange(self.length - 1, -1, -1)).sum(-1)
        return self.log_q[index]


def all_subset_draws(batch: int, length: int, *, beta_weighting: bool = False):
    """MaskDraws enumerating every non-empty subset S with weights that make the draw *average* an
    exact expectation under the ``count`` scheme: P(S) = 1 / (L * C(L, n)), weight = K * P(S) * L / n."""
    from math import comb

    from dipod.bounds.masked import MaskDraws

    subsets = [s for n in range(1, length + 1) for s in itertools.combinations(range(length), n)]
    k = len(subsets)
    mask = torch.zeros(k, length, dtype=torch.bool)
    weight = torch.zeros(k)
    for j, s in enumerate(subsets):
        mask[j, list(s)] = True
        n = len(s)
        weight[j] = k * (1.0 / (length * comb(length, n))) * length / n
    return MaskDraws(
        mask=mask[None].expand(batch, -1, -1),
        weight=weight[None].expand(batch, -1),
        t=(mask.sum(-1).float() / length)[None].expand(batch, -1),
    )
