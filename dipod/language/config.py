"""Config section for language runs (masked diffusion LMs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LanguageConfig(BaseModel):
    """Model, task, sampler and rollout settings of a language run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str = "sudoku"
    """Task name: sudoku | countdown | gsm8k | math500."""
    group_size: int = Field(6, ge=2)
    """G completions per prompt (group-relative advantages need at least 2)."""
    prompts_per_step: int = Field(4, ge=1)
    num_iterations: int = Field(4, ge=1)
    """mu: inner updates per rollout, reusing the stored ELBO draws."""
    elbo_draws: int = Field(4, ge=1)
    """K Monte-Carlo masking draws per completion."""
