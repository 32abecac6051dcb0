"""Advantage estimators: group-relative (language) and GAE (control)."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, normalize_std: bool = False, eps: float = 1e-4
) -> torch.Tensor:
    """A = r - mean_group(r), optionally divided by the group's std + eps (GRPO); d1 and SPG use mean only.

    Args:
        rewards: (B,) with the G completions of each prompt contiguous, B = prompts * G.
    Returns:
        (B,) advantages.
    """
    if rewards.ndim != 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"rewards must be (prompts * {group_size},), got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)  # (B / G, G)
    adv = grouped - grouped.mean(-1, keepdim=True)
    if normalize_std:
        adv = adv / (grouped.std(-1, keepdim=True) + eps)
    return adv.reshape(-1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation with termination distinct from truncation.

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t): a terminal state has no future,
    while a truncated episode still bootstraps from its final observation's value. Either ends the
    episode, so the recursion A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1} stops there.

    Args:
        rewards, values, next_values: (T, E); next_values[t] = V(s_{t+1}), the final observation's
            value where the episode was truncated. terminated, truncated: (T, E) bool.
    Returns:
        advantages (T, E) and returns = advantages + values (T, E), in the dtype of ``rewards``: the masks
        take that dtype too, so gamma and gamma * lam are not rounded to float32 for float64 inputs.
    """
    not_terminal = 1.0 - terminated.to(rewards.dtype)
    not_done = 1.0 - (terminated | truncated).to(rewards.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values  # (T, E)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):  # backward in time, vectorised over envs
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values
