"""Config section for control runs (flow policies and the Gaussian PPO baseline)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dipod.config import RunConfigBase
from dipod.objectives import objective_params, with_objective_name
from dipod.objectives.ratio_ppo import FpoFlowParams

Width = Annotated[int, Field(gt=0)]
"""A hidden layer's number of units."""


def _minibatch_problem(num_envs: int, rollout_steps: int, num_minibatches: int) -> str | None:
    batch = num_envs * rollout_steps
    if batch % num_minibatches == 0:
        return None
    return (
        f"control.num_envs * control.rollout_steps = {batch} must be divisible by "
        f"control.num_minibatches = {num_minibatches}"
    )


class BCConfig(BaseModel):
    """Behaviour cloning of a flow policy on demonstrations (``dipod.control.bc.train_bc``).

    The policy's architecture comes from the control section (actor_hidden, time_embed_dim, actor_scale,
    ...), so the RL run that starts from the clone (``control.init_from``) builds the same network.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset: str | None = None
    """Minari dataset: a local path, or a dataset id under $MINARI_DATASETS_PATH (never downloaded)."""
    steps: int = Field(5000, ge=1)
    """Optimiser steps."""
    batch_size: int = Field(256, ge=1)
    """(obs, action) pairs per step."""
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    cfm_draws: int = Field(4, ge=1)
    """(tau, eps) draws per pair and step."""
    val_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of whole episodes held out for the validation loss (at least one when > 0 and E >= 2)."""
    val_every: int = Field(250, ge=0)
    """Validation CFM loss and weighted ELBO on the held-out episodes every this many steps; 0 only at the end."""
    eval_every: int = Field(0, ge=0)
    """Return of the cloned policy in the env every this many steps; 0 only at the end."""
    eval_episodes: int = Field(10, ge=1)
    checkpoint_every: int = Field(1000, ge=1)


class ControlConfig(BaseModel):
    """Environment, policy, rollout and update settings of a control run.

    Derived values (batch size = num_envs * rollout_steps, minibatch size = batch / num_minibatches)
    are computed by the trainer; ``_check`` rejects combinations that cannot split evenly.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ------------------------------------------------------------------ environment
    env: str = "Pendulum-v1"
    """gymnasium id (Pendulum-v1, HalfCheetah-v5, Hopper-v5, Walker2d-v5, Ant-v5) or ``bandit``."""
    num_envs: int = Field(8, ge=1)
    vector_mode: Literal["sync", "async"] = "sync"
    """gymnasium vectorisation: sub-envs in this process (sync) or one process each (async)."""
    reward_scale: float = Field(1.0, gt=0)
    """Rewards are multiplied by this before GAE (returns are logged unscaled)."""
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the env's constructor: ``gymnasium.make(env, **env_kwargs)`` (e.g.
    ``ctrl_cost_weight``), or a custom env's (bandit: ``modes`` [m1, m2], ``width``)."""

    # ------------------------------------------------------------------ policy
    policy: Literal["flow", "gaussian"] = "flow"
    """flow: velocity-field policy trained with objective.name; gaussian: PPO on exact log-probs (baseline)."""
    actor_hidden: tuple[Width, ...] = (64, 64)
    """Hidden layer widths of the actor (empty: a linear policy)."""
    critic_hidden: tuple[Width, ...] = (64, 64)
    activation: Literal["elu", "tanh", "relu", "silu"] = "elu"
    time_embed_dim: int = Field(8, ge=2)
    """Sinusoidal embedding size of the flow time tau (even)."""
    actor_scale: float = Field(1.0, gt=0)
    """Actions are divided by this before the flow (and sampled flow outputs multiplied by it)."""
    output_scale: float = Field(1.0, gt=0)
    """The velocity network's output is multiplied by this (FPO++'s mlp_output_scale)."""
    sampling_steps: int = Field(8, ge=1)
    """Euler steps of the flow sampler."""
    cfm_draws: int = Field(8, ge=1)
    """N (tau, eps) draws per transition."""
    init_log_std: float = 0.0
    """Gaussian baseline: initial log standard deviation (state-independent)."""
    normalize_obs: bool = True
    """Running (Welford) observation normalisation, updated on every rollout."""

    # ------------------------------------------------------------------ rollout and update
    rollout_steps: int = Field(64, ge=1)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    update_epochs: int = Field(10, ge=1)
    num_minibatches: int = Field(4, ge=1)
    value_coef: float = Field(0.5, ge=0)
    adv_norm: Literal["minibatch", "batch", "none"] = "minibatch"
    adv_clamp: float = Field(100.0, gt=0)
    """Normalised advantages are clamped to +-this (FPO++)."""
    critic_lr: float | None = Field(None, gt=0)
    """Critic learning rate; None uses optim.lr."""

    # ------------------------------------------------------------------ self-distillation (before RL)
    self_distill_iterations: int = Field(0, ge=0)
    """Iterations of fitting the initial policy's own samples (0 disables the stage)."""
    self_distill_rollout_steps: int = Field(8, ge=1)
    self_distill_batch_size: int = Field(1024, ge=1)
    self_distill_lr: float = Field(3e-4, gt=0)
    self_distill_draws: int = Field(16, ge=1)

    # ------------------------------------------------------------------ evaluation
    eval_episodes: int = Field(4, ge=1)
    """Episodes per evaluation (deterministic flow noise from the eval generator)."""

    # ------------------------------------------------------------------ pre-training and RL from it
    bc: BCConfig = Field(default_factory=BCConfig)
    """Behaviour cloning on demonstrations (``dipod sft`` with a control config)."""
    init_from: str | None = None
    """BC checkpoint (file, or a directory whose checkpoints/ holds them) to start the actor and the
    observation normaliser from; None starts from random initialisation. Flow policies only."""
    critic_warmup_iterations: int = Field(0, ge=0)
    """RL iterations at the start that update only the critic (the actor stays as loaded), as DPPO does."""

    # Checks on one field report that field (``control.num_minibatches = 3: ...``); the model validator
    # repeats the divisibility check for assignments to num_envs or rollout_steps after construction.

    @field_validator("time_embed_dim")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2 != 0:
            raise ValueError("must be even (sin and cos pairs)")
        return value

    @field_validator("num_minibatches")
    @classmethod
    def _divides_batch(cls, value: int, info: ValidationInfo) -> int:
        if "num_envs" in info.data and "rollout_steps" in info.data:
            problem = _minibatch_problem(info.data["num_envs"], info.data["rollout_steps"], value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> ControlConfig:
        problem = _minibatch_problem(self.num_envs, self.rollout_steps, self.num_minibatches)
        if problem is not None:
            raise ValueError(problem)
        if self.init_from is not None and self.policy != "flow":
            raise ValueError(
                f"control.init_from = {self.init_from!r} loads a flow policy, but control.policy = {self.policy!r}"
            )
        return self


ControlObjective = objective_params("control")
"""The params model of a registered control objective, chosen by ``objective.name``."""


class ControlRunConfig(RunConfigBase):
    """A control run: a flow (or Gaussian) policy in gymnasium vector environments."""

    domain: Literal["control"] = "control"
    objective: ControlObjective = Field(default_factory=FpoFlowParams)  # type: ignore[valid-type]
    """The policy-gradient method and its settings: fpo | fpo_pp for flow policies, ppo for the Gaussian one."""
    control: ControlConfig
    """Environment, policy, rollout and update settings."""

    @model_validator(mode="before")
    @classmethod
    def _default_objective(cls, data: Any) -> Any:
        """A missing ``objective.name`` is fpo for a flow policy and ppo for the Gaussian baseline."""
        control = data.get("control") if isinstance(data, dict) else None
        gaussian = isinstance(control, dict) and control.get("policy") == "gaussian"
        return with_objective_name(data, "control", "ppo" if gaussian else "fpo")

    @model_validator(mode="after")
    def _consistent(self) -> ControlRunConfig:
        problems = _control_problems(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


def _control_problems(cfg: ControlRunConfig) -> list[str]:
    """Settings a control run would crash on or silently ignore, one message each."""
    cc, obj, problems = cfg.control, cfg.objective, []
    exact = obj.name == "ppo"
    if (cc.policy == "gaussian") != exact:
        problems.append(
            f"control.policy = {cc.policy!r} needs objective.name = "
            f"{'ppo' if cc.policy == 'gaussian' else 'fpo or fpo_pp'}, got {obj.name!r} (a Gaussian policy has an "
            "exact log-likelihood and is trained with PPO; a flow policy with an ELBO-ratio objective)"
        )
    if cc.policy == "gaussian":
        why = "the Gaussian baseline's log-likelihood is exact, so it has no ELBO"
        if cfg.drift.every > 0:
            problems.append(
                f"drift.every = {cfg.drift.every} needs a flow policy, but control.policy = 'gaussian' ({why} "
                "to drift from its likelihood); set drift.every=0"
            )
        if cc.self_distill_iterations > 0:
            problems.append(
                f"control.self_distill_iterations = {cc.self_distill_iterations} has no effect with "
                "control.policy = 'gaussian' (self-distillation fits flow policies); set it to 0"
            )
    if obj.dipod_scale == "mean":
        problems.append(
            "objective.dipod_scale = 'mean' scales by completion tokens, which control has none of (an action's "
            "dimension is fixed); use 'sum' or 'normalized'"
        )
    if cfg.train.bf16:
        problems.append(
            "train.bf16 = True has no effect on control runs: bf16 autocast applies to language models on CUDA; "
            "set train.bf16=false"
        )
    return problems
