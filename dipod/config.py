"""Typed run configuration: YAML plus ``--set a.b=c`` overrides, validated before any work starts.

Every section is a strict pydantic model: an unknown key, a wrong type or an out-of-range value
raises ``ConfigError`` naming the dotted key, the value, and the file and line it came from.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dipod.control.config import ControlConfig
from dipod.language.config import LanguageConfig
from dipod.objectives import OBJECTIVES


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key, the value and where it came from."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ObjectiveConfig(Strict):
    """Which policy-gradient method, and its hyperparameters (../shared/paper.md §5 for the release's)."""

    name: str = "fpo"
    """Registered objective: language fpo | spg | diffu_grpo; control fpo | fpo_pp."""
    dipod_beta: float = Field(0.05, ge=0)
    """Weight of DiPOD's on-policy ELBO term; 0 gives the plain baseline."""
    clip_low: float = Field(0.2, gt=0, lt=1)
    """Lower PPO clip: ratios below 1 - clip_low stop paying for negative advantages."""
    clip_high: float = Field(0.2, gt=0)
    """Upper PPO clip (FPO++: the ASPO clip c)."""
    elbo_scale: Literal["sum", "mean"] = "sum"
    """Language ELBO scale: sequence sum (d1/FPO) or per-token mean (SPG)."""
    kl_beta: float = Field(0.0, ge=0)
    """Weight of the reference term (the release's linear ELBO difference, 0.04 there)."""
    kl_type: Literal["elbo_difference", "k3"] = "elbo_difference"
    """Reference term: the release's ELBO difference, or k3 KL on per-token log-probs (diffu-GRPO)."""
    mix_weight: float = Field(0.5, ge=0, le=1)
    """SPG: weight of the EUBO in the negative-advantage mixture (1 = pure EUBO)."""
    eubo_beta: float = Field(1.5, gt=0)
    """SPG: Renyi power beta_E of the EUBO proxy."""
    log_ratio_max: float = Field(3.0, gt=0)
    """FPO++: straight-through clamp on the per-draw log ratio (the release's ``cfm_diff_clamp_max``: 3 in its
    motion-tracking config, which dipod follows; 10 is its config class's default)."""
    neg_adv_cfm_clamp: float | None = Field(20.0, gt=0)
    """FPO++: clamp on the current CFM loss for negative advantages (None disables; the release's 20)."""
    cfm_loss_clamp: float | None = Field(None, gt=0)
    """FPO++: clamp on both the old and the current CFM losses (the release's ``cfm_loss_clamp``; None
    disables, as its motion-tracking config does with -1; its config class's default is 20)."""
    trust_region: Literal["aspo", "ppo"] = "aspo"
    """FPO++: ASPO (PPO clip for A > 0, SPO for A < 0) or plain PPO clipping."""


class OptimConfig(Strict):
    """AdamW settings."""

    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Global gradient-norm clip; None disables."""


class TrainConfig(Strict):
    """Length of the run and how often it logs, evaluates and checkpoints."""

    steps: int = Field(50, ge=1)
    """Policy-improvement steps (each: a rollout, then the inner updates)."""
    log_every: int = Field(1, ge=1)
    eval_every: int = Field(0, ge=0)
    """Evaluate every this many steps; 0 only at the end."""
    checkpoint_every: int = Field(10, ge=1)
    max_bad_steps: int = Field(5, ge=1)
    """Consecutive non-finite losses or gradients after which the run stops."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, ..."""
    bf16: bool = False
    """bf16 autocast on CUDA (language models; control runs reject it)."""


class DriftConfig(Strict):
    """Double-drift monitor: ELBO, log-likelihood, their gap and the gradient cosine on a probe batch."""

    every: int = Field(0, ge=0)
    """Measure every this many steps; 0 disables the monitor."""
    probe_size: int = Field(16, ge=1)
    """Fresh samples in the probe batch."""
    num_orders: int = Field(16, ge=1)
    """Language: orders for the importance-weighted log-likelihood where exact enumeration is too big."""


class RunConfig(Strict):
    """A whole run: the domain section, the objective and the training schedule."""

    domain: Literal["language", "control"]
    seed: int = Field(0, ge=0)
    name: str = "run"
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    drift: DriftConfig = DriftConfig()
    language: LanguageConfig | None = None
    control: ControlConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        section = self.language if self.domain == "language" else self.control
        if section is None:
            raise ValueError(f"domain is {self.domain!r} but the `{self.domain}` section is missing")
        if self.objective.name not in OBJECTIVES[self.domain]:
            choices = ", ".join(sorted(OBJECTIVES[self.domain]))
            raise ValueError(
                f"objective.name = {self.objective.name!r} is not a {self.domain} objective; choose one of: {choices}"
            )
        if self.domain == "control":
            problems = _control_problems(self)
            if problems:
                raise ValueError("\n  ".join(problems))
        return self


def _control_problems(cfg: RunConfig) -> list[str]:
    """Settings a control run would crash on or silently ignore, one message each."""
    cc, obj, problems = cfg.control, cfg.objective, []
    assert cc is not None
    if cc.policy == "gaussian":
        why = "the Gaussian baseline's log-likelihood is exact, so it has no ELBO"
        if cfg.drift.every > 0:
            problems.append(
                f"drift.every = {cfg.drift.every} needs a flow policy, but control.policy = 'gaussian' ({why} "
                "to drift from its likelihood); set drift.every=0"
            )
        if obj.dipod_beta > 0:
            problems.append(
                f"objective.dipod_beta = {obj.dipod_beta} has no effect with control.policy = 'gaussian' ({why} "
                "term); set objective.dipod_beta=0"
            )
        if cc.self_distill_iterations > 0:
            problems.append(
                f"control.self_distill_iterations = {cc.self_distill_iterations} has no effect with "
                "control.policy = 'gaussian' (self-distillation fits flow policies); set it to 0"
            )
    elif obj.name == "fpo_pp" and obj.clip_low != obj.clip_high:
        problems.append(
            f"objective.name = 'fpo_pp' has one clip parameter c = objective.clip_high = {obj.clip_high} and would "
            f"ignore objective.clip_low = {obj.clip_low}; set both to the same value"
        )
    if cfg.train.bf16:
        problems.append(
            "train.bf16 = True has no effect on control runs: bf16 autocast applies to language models on CUDA; "
            "set train.bf16=false"
        )
    return problems


# --------------------------------------------------------------------------- loading


def _yaml_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of each mapping key in a YAML document."""
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted + ".")

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return lines


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], YAML value of c)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. objective.dipod_beta=0.05")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value {raw!r} is not valid YAML ({exc})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b=c`` set, creating sections as needed."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: `{'.'.join(parts[: i + 1])}` is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _field_names(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Known keys of the section at ``path`` (for 'did you mean' hints)."""
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        candidates = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type)]
        models = [c for c in candidates if issubclass(c, BaseModel)]
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _describe(exc: ValidationError, source: str, lines: dict[str, int]) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc)
        where = f" (line {lines[dotted]})" if dotted in lines else ""
        if err["type"] == "extra_forbidden":
            known = _field_names(RunConfig, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f"; did you mean `{'.'.join([*map(str, loc[:-1]), hint[0]])}`?" if hint else ""
            messages.append(f"unknown key `{dotted}`{where}{suggestion}")
        elif not loc:
            messages.append(err["msg"].removeprefix("Value error, "))
        else:
            value = err.get("input")
            messages.append(f"`{dotted}` = {value!r}{where}: {err['msg']}")
    return f"invalid config {source}:\n  " + "\n  ".join(messages)


def validate_config(data: dict[str, Any], *, source: str = "<dict>", lines: dict[str, int] | None = None) -> RunConfig:
    """Validate a plain dict into a RunConfig, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines or {})) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config, apply ``--set`` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
        lines = _yaml_lines(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    data = apply_overrides(data, list(overrides))
    return validate_config(data, source=str(path), lines=lines)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
