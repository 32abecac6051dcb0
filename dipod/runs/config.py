"""Run configs of every domain: pick the domain's model by the ``domain`` key, load, validate.

The core (``dipod.config``) knows no domain; each domain defines its run config (``LanguageRunConfig``,
``ControlRunConfig``) with its own section and objective. This module is where they meet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dipod.config import ConfigError, read_config, validate_as
from dipod.control.config import ControlRunConfig
from dipod.language.config import LanguageRunConfig

RunConfig = LanguageRunConfig | ControlRunConfig
"""A validated run config of either domain."""

RUN_CONFIGS: dict[str, type[LanguageRunConfig] | type[ControlRunConfig]] = {
    "language": LanguageRunConfig,
    "control": ControlRunConfig,
}


def validate_config(data: Any, *, source: str = "<dict>", lines: dict[str, str] | None = None) -> RunConfig:
    """Validate a plain dict into its domain's run config, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, got {type(data).__name__}")
    domain = data.get("domain")
    if domain not in RUN_CONFIGS:
        where = f" ({lines['domain']})" if lines and "domain" in lines else ""
        raise ConfigError(
            f"invalid config {source}:\n  `domain` = {domain!r}{where}: choose one of {', '.join(RUN_CONFIGS)}"
        )
    return validate_as(RUN_CONFIGS[domain], data, source=source, lines=lines)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (and its ``base:`` chain), apply ``--set`` overrides and validate it."""
    source = read_config(path, overrides)
    return validate_config(source.data, source=source.origin, lines=source.lines)
