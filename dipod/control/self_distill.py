"""Self-distillation before RL: fit the policy's CFM loss on a frozen copy's own samples (DiPOD's control recipe).

Distilling the initial policy's samples into itself maximises the ELBO on on-policy data, so the
bound is tight where the first policy-gradient steps need it; the output distribution stays (ideally)
the same. The caller resets the RL optimiser afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from dipod.bounds.flow import draw_flow_noise
from dipod.control.policy import FlowPolicy
from dipod.optim import clip_and_step, loss_is_finite

Collect = Callable[[FlowPolicy], tuple[torch.Tensor, torch.Tensor]]
"""teacher -> (normalised obs (M, S), actions (M, A)) from one rollout of the teacher in the envs."""


def self_distill(
    actor: FlowPolicy,
    collect: Collect,
    *,
    iterations: int,
    batch_size: int,
    lr: float,
    num_draws: int,
    generator: torch.Generator,
    max_grad_norm: float | None = 1.0,
    weight_decay: float = 1e-4,
    buffer_floor: int = 0,
) -> dict[str, float]:
    """Run ``iterations`` of: roll out the frozen teacher, then one AdamW step on the student's CFM loss.

    The buffer keeps every (obs, action) pair collected; once it exceeds max(4 * batch_size,
    buffer_floor) its older half is dropped, as in the reference implementation.

    Returns:
        ``self_distill/cfm_first`` and ``self_distill/cfm_last`` (the student's mean CFM loss on the
        teacher's samples at the first and last iteration), ``self_distill/skipped_updates``.
    """
    teacher = copy.deepcopy(actor).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(actor.parameters(), lr=lr, weight_decay=weight_decay)
    buffer_obs: torch.Tensor | None = None
    buffer_act: torch.Tensor | None = None
    losses: list[float] = []
    skipped = 0
    for _ in range(iterations):
        obs, actions = collect(teacher)
        buffer_obs = obs if buffer_obs is None else torch.cat([buffer_obs, obs])
        buffer_act = actions if buffer_act is None else torch.cat([buffer_act, actions])
        if buffer_obs.shape[0] > max(4 * batch_size, buffer_floor):
            keep = buffer_obs.shape[0] // 2
            buffer_obs, buffer_act = buffer_obs[-keep:], buffer_act[-keep:]
        rows = torch.randint(buffer_obs.shape[0], (batch_size,), generator=generator, device=generator.device)
        rows = rows.to(buffer_obs.device)
        draws = draw_flow_noise(
            batch_size, num_draws, actor.action_dim, generator=generator, device=generator.device
        ).to(buffer_obs.device)
        loss = actor.cfm_losses(buffer_obs[rows], buffer_act[rows], draws).mean()
        losses.append(float(loss.detach()))
        if not loss_is_finite(loss):
            skipped += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        applied, _ = clip_and_step(optimizer, actor.parameters(), max_grad_norm)
        skipped += int(not applied)
    return {
        "self_distill/cfm_first": losses[0] if losses else float("nan"),
        "self_distill/cfm_last": losses[-1] if losses else float("nan"),
        "self_distill/skipped_updates": float(skipped),
    }
