"""The domain-free part of a run's configuration, and the YAML loading every config goes through.

A config is YAML plus ``--set a.b=c`` overrides. It may name a ``base:`` config (a path relative to
it) whose keys it overrides, so an experiment's config is the few lines that differ. Every section is
a strict pydantic model: an unknown key, a wrong type or an out-of-range value raises ``ConfigError``
naming the dotted key, the value, and the file and line it came from (inside a base too).

The domains extend ``RunConfigBase`` with their own section and objective (``LanguageRunConfig``,
``ControlRunConfig``); ``dipod.runs.config`` picks one by the ``domain`` key.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key, the value and where it came from."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    eval_at_start: bool = False
    """Also evaluate the initial policy (a row at step 0), e.g. a pretrained one before fine-tuning."""
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    """Newest checkpoints kept in ``checkpoints/`` (older ones are deleted after each save)."""
    max_bad_steps: int = Field(5, ge=1)
    """Consecutive non-finite losses or gradients after which the run stops."""
    stop_on_collapse: bool = False
    """Stop the run (after a checkpoint) once the collapse alarm fires (``health``); either way the alarm is
    flagged in the progress line, ``summary.json`` and ``dipod report``."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, ..."""
    bf16: bool = False
    """bf16 autocast on CUDA (language models; control runs reject it)."""
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    """Metric sinks besides ``metrics.jsonl`` (always written: resume and ``dipod report`` read it), as TRL's
    ``report_to``: tensorboard (``tb/``), wandb (Weights & Biases, offline unless ``WANDB_MODE`` says
    otherwise; needs ``pip install wandb``). ``[]`` for none."""


class DriftConfig(Strict):
    """Double-drift monitor: ELBO, log-likelihood, their gap and the gradient cosine on a probe batch."""

    every: int = Field(0, ge=0)
    """Measure every this many steps; 0 disables the monitor."""
    probe_size: int = Field(16, ge=1)
    """Fresh samples in the probe batch."""
    num_orders: int = Field(16, ge=1)
    """Language: orders for the importance-weighted log-likelihood where exact enumeration is too big."""
    chunk_rows: int = Field(256, ge=1)
    """Language: decoding states (probe_size * num_orders * completion length in all) per forward pass; the
    log-likelihood's gradient is accumulated chunk by chunk, so this bounds the probe's memory."""


class AdaptiveBetaConfig(Strict):
    """Adaptive DiPOD weight driven by the gap and a collapse signal (YAML-configurable, strict).

    The gap alone cannot tell a tight bound from a collapsed policy: a deterministic policy is trivially
    tight, and a policy emitting only EOS can show any gap. Self-distilling a collapsing policy on its own
    samples entrenches the collapse, so while the collapse signal is on, beta never grows.
    """

    budget: float = Field(gt=0)
    """Gap log pi - ELBO (nats, as ``drift/gap`` reports it) the run tolerates on its own samples."""
    factor: float = Field(2.0, gt=1)
    """Multiplier applied per adjustment: PPO's adaptive-KL factor."""
    beta_min: float = Field(1e-3, ge=0)
    """Lower clamp; 0 lets the controller switch the term off."""
    beta_max: float = Field(1.0, gt=0)
    """Upper clamp: a runaway weight would turn the update into pure self-distillation."""
    hysteresis: float = Field(1.5, ge=1)
    """Below budget / hysteresis the weight shrinks; between the two thresholds it stays (PPO's 1.5)."""
    reference_steps: int = Field(3, ge=1)
    """Steps whose mean token NLL is the run-start entropy reference."""
    max_entropy_drop: float | None = Field(0.5, gt=0, le=1)
    """Collapsing when the chosen tokens' NLL (``health/token_nll``, the entropy estimate) has fallen by more
    than this fraction of its start. Half the alarm's default (0.9): the controller should stop pushing well
    before the run has to be stopped. None ignores this signal."""
    max_zero_std_ratio: float | None = Field(0.8, gt=0, le=1)
    """Collapsing when more than this fraction of groups have all-equal rewards (``health/zero_std_ratio``):
    the within-group reward spread that the PG term learns from is mostly gone. None ignores this signal."""
    on_collapse: Literal["shrink", "hold"] = "shrink"
    """While collapsing, divide beta by ``factor`` at each measurement, or only stop it from growing."""

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveBetaConfig:
        if self.beta_min > self.beta_max:
            raise ValueError(f"need beta_min <= beta_max, got {self.beta_min} > {self.beta_max}")
        return self


class HealthConfig(Strict):
    """Health metrics and the collapse alarm's thresholds. A threshold of None turns that signal's alarm off.

    Relative signals compare with the run-start reference: the mean over the first ``reference_steps``
    steps. A signal fires after ``patience`` consecutive steps past its threshold, so one unlucky batch
    does not flag a run; the run counts as collapsed from the first time any signal fires.
    """

    enabled: bool = True
    """Compute and log ``health/*`` every step (a few cheap reductions of the rollout)."""
    reference_steps: int = Field(3, ge=1)
    """Steps whose mean is the run-start reference of effective tokens, token NLL and ELBO per token. A run
    that already collapses within them (a very large lr or |beta|) is still caught by the absolute signals
    (equal-reward groups, degenerate outputs)."""
    patience: int = Field(3, ge=1)
    """Consecutive steps a signal must be past its threshold before it fires: with 8-64 prompts a step the
    batch statistics are noisy, while a collapse lasts (hundreds of steps in the release)."""
    max_tokens_drop: float | None = Field(0.5, gt=0, le=1)
    """Fire when effective tokens fall by more than this fraction of the reference: a policy that stops
    writing (the release's EOS-only collapse goes to ~100 %); RL that merely trims verbosity drops less."""
    max_zero_std_ratio: float | None = Field(0.95, gt=0, le=1)
    """Fire when more than this fraction of groups have all-equal rewards: almost no group carries a learning
    signal (all failing after a collapse, or all solved). Just below 1 so that it needs (nearly) every group."""
    zero_std_window: int = Field(10, ge=1)
    """Steps pooled for the equal-rewards signal: their mean ``zero_std_ratio`` is what is compared with
    ``max_zero_std_ratio``. With a few prompts a step, steps whose every group happens to get equal rewards
    come in runs in a healthy run (tiny Countdown, 4 groups a step: FPO alone flagged at step 227 with one
    step's ratio, while its accuracy held); ten steps pool ten times as many groups."""
    max_degenerate_frac: float | None = Field(0.5, gt=0, le=1)
    """Fire when more than this fraction of completions are degenerate (empty, one repeated token, or
    group-identical): at that point most of the batch trains the policy on its own degenerate output."""
    group_identical_is_degenerate: bool = True
    """Count group-identical completions as degenerate. Set False on tasks with one correct answer written
    one way (4x4 Sudoku), where a policy that has solved a prompt also repeats itself across the group."""
    max_nll_drop: float | None = Field(0.9, gt=0, le=1)
    """Fire when the chosen tokens' mean NLL (the entropy estimate) falls by more than this fraction of the
    reference: the policy has turned near-deterministic (a trivially tight bound, no exploration left).
    Sharpening by RL is expected, hence a high fraction."""
    max_elbo_shift: float | None = Field(1.0, gt=0)
    """Fire when the ELBO per token moves by more than this many nats from the reference, either way. One nat
    per token is a factor e on every token's likelihood: far more than RL's sharpening on a pretrained policy,
    and what a runaway bound (a reference term pushing it down, e.g. beta = -0.5) produces within tens of steps."""


class RunConfigBase(Strict):
    """What every run has, whatever its domain: seed, name, optimiser, schedule, drift monitor.

    A domain's run config adds its section (``language`` or ``control``) and its ``objective``.
    """

    domain: str
    seed: int = Field(0, ge=0)
    name: str = "run"
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    drift: DriftConfig = DriftConfig()
    adaptive_beta: AdaptiveBetaConfig | None = None
    """Adapt ``objective.dipod_beta`` (its starting value) from the drift monitor's gap and a collapse signal;
    None keeps it fixed."""
    health: HealthConfig = HealthConfig()
    """Health metrics (``health/*``) and the collapse alarm."""

    @model_validator(mode="after")
    def _adaptive_needs_probe(self) -> RunConfigBase:
        if self.adaptive_beta is not None and self.drift.every == 0:
            raise ValueError("adaptive_beta needs the drift monitor: set drift.every > 0")
        return self


# --------------------------------------------------------------------------- reading YAML


@dataclass
class ConfigSource:
    """A config's merged data before validation, and where each dotted key was last set."""

    data: dict[str, Any]
    origin: str
    """The file named on the command line (for messages)."""
    lines: dict[str, str] = field(default_factory=dict)
    """Dotted key -> where it was set: "line N" (the config itself), "BASE, line N" or "--set KEY=VALUE"."""


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


def merge(base: dict[str, Any], override: dict[str, Any], *, _nested: bool = False) -> dict[str, Any]:
    """``base`` with ``override``'s keys set recursively (mappings merge, anything else replaces).

    A section that names another ``name`` than the base's (an ``objective:`` of another method) replaces the
    base's section whole: the other method's settings would not be valid for it.
    """
    if _nested and "name" in base and "name" in override and base["name"] != override["name"]:
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, _nested=True)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, _chain: tuple[Path, ...] = ()
) -> ConfigSource:
    """A YAML config merged over its ``base:`` chain, with ``--set`` overrides applied (not validated)."""
    path = Path(path)
    if not path.is_file():
        where = f" (base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {path} does not exist{where}")
    if path.resolve() in _chain:
        raise ConfigError(f"config {path}: `base:` chain loops back to itself ({' -> '.join(map(str, _chain))})")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
        lines = {key: f"line {n}" for key, n in _yaml_lines(text).items()}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {path}: expected a mapping at the top level, got {type(data).__name__}")
    base_name = data.pop("base", None)
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(
                f"config {path} ({lines.get('base', 'base')}): `base` must be a file path, got {base_name!r}"
            )
        base_path = path.parent / base_name
        parent = read_config(base_path, _chain=(*_chain, path.resolve()))
        data = merge(parent.data, data)
        inherited = {k: f"{base_path}, {v}" if v.startswith("line ") else v for k, v in parent.lines.items()}
        lines = {**inherited, **lines}
    data = apply_overrides(data, list(overrides))
    for item in overrides:
        lines[".".join(parse_override(item)[0])] = f"--set {item}"
    return ConfigSource(data, str(path), lines)


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


# --------------------------------------------------------------------------- validating


def _section_models(model: type[BaseModel], path: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The pydantic models the section at ``path`` may be (several for a tagged union; none past a value)."""
    models = [model]
    for part in path:
        found = []
        for m in models:
            field_info = m.model_fields.get(str(part))
            if field_info is None:
                continue
            annotation = field_info.annotation
            candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
            found += [c for c in candidates if issubclass(c, BaseModel)]
        models = found
    return models


def _describe(exc: ValidationError, model: type[BaseModel], source: str, lines: dict[str, str]) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = _strip_tags(model, loc)
        dotted = ".".join(str(p) for p in loc)
        where = f" ({lines[dotted]})" if dotted in lines else ""
        if err["type"] == "extra_forbidden":
            known, tag = _known_keys(model, tuple(err["loc"][:-1]))
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f"; did you mean `{'.'.join([*map(str, loc[:-1]), hint[0]])}`?" if hint else ""
            if tag is not None and not hint:
                suggestion = f": not a setting of {loc[0]} {tag!r} (its settings: {', '.join(known)})"
            messages.append(f"unknown key `{dotted}`{where}{suggestion}")
        elif not loc or (err["type"] in ("value_error", "assertion_error") and isinstance(err.get("input"), dict)):
            prefix = f"`{dotted}`{where}: " if loc else ""
            messages.append(prefix + err["msg"].removeprefix("Value error, "))
        else:
            messages.append(f"`{dotted}` = {err.get('input')!r}{where}: {err['msg']}")
    return f"invalid config {source}:\n  " + "\n  ".join(messages)


def _strip_tags(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the tags pydantic puts in for tagged unions: ``objective.fpo.x`` -> ``objective.x``.

    A part is a tag where its section may be one of several models, it names one of them, and it is no key.
    """
    out: list[Any] = []
    for part in loc:
        sections = _section_models(model, tuple(out))
        tags = {s.model_fields["name"].default for s in sections if "name" in s.model_fields}
        if len(sections) > 1 and part in tags and not any(part in s.model_fields for s in sections):
            continue
        out.append(part)
    return tuple(out)


def _known_keys(model: type[BaseModel], raw_loc: tuple[Any, ...]) -> tuple[list[str], str | None]:
    """Keys of the section at pydantic's ``raw_loc`` (tags included), and the tag that chose it, if any."""
    models, tag = [model], None
    for part in raw_loc:
        children = []
        for m in models:
            field_info = m.model_fields.get(str(part))
            if field_info is not None:
                args = getattr(field_info.annotation, "__args__", (field_info.annotation,))
                children += [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if children:
            models = children
            continue
        chosen = [m for m in models if "name" in m.model_fields and m.model_fields["name"].default == part]
        models, tag = chosen or models, part if chosen else tag
    return sorted({key for m in models for key in m.model_fields}), tag


def validate_as(
    model: type[BaseModel], data: dict[str, Any], *, source: str = "<dict>", lines: dict[str, str] | None = None
) -> Any:
    """Validate a plain dict into ``model``, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, model, source, lines or {})) from None


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
