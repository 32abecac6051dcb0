"""Config section for control runs (flow policies)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ControlConfig(BaseModel):
    """Environment, policy, rollout and update settings of a control run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    env: str = "Pendulum-v1"
    num_envs: int = Field(8, ge=1)
    rollout_steps: int = Field(64, ge=1)
    sampling_steps: int = Field(8, ge=1)
    """Euler steps of the flow sampler."""
    cfm_draws: int = Field(8, ge=1)
    """N (tau, eps) draws per transition."""
