"""The task interface: examples from files or a generator, prompts in two formats, verifiable rewards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from dipod.language.tasks.data import Row, load_examples
from dipod.language.tasks.prompts import PromptFormat, check_format

E = TypeVar("E")


@dataclass(frozen=True)
class Task(Generic[E]):
    """A task with a verifiable reward. Every callable is a plain function of an example (no state).

    ``reward`` and ``accuracy`` take the decoded completion text and never raise or execute it.
    """

    name: str
    parse_row: Callable[[Row, Callable[..., Any]], E]
    """(row, field) -> example; reads fields through ``field`` so errors name file, line and field."""
    prompt: Callable[[E, PromptFormat], str]
    """The prompt text of an example in a format."""
    target: Callable[[E, PromptFormat], str] | None
    """A reference completion (SFT data), or None where the task has none in that form."""
    reward: Callable[[str, E, PromptFormat], float]
    """The training reward of a completion (the DiPOD release's reward components)."""
    accuracy: Callable[[str, E, PromptFormat], float]
    """The evaluation metric in [0, 1]: 1 for a correct answer (Sudoku: fraction of blanks right)."""
    generate: Callable[[int, np.random.Generator], list[E]] | None
    """(n, rng) -> n fresh examples, where the task can be generated."""
    sample_file: str
    """File name of the shipped sample under dipod/assets/data/."""
    generate_options: Callable[[Any], dict[str, Any]] = lambda data: {}
    """``DataConfig`` -> keyword arguments of ``generate`` (difficulty settings such as Sudoku's blanks)."""
    with_data_options: Callable[[E, Any], E] | None = None
    """(example, ``DataConfig``) -> the example carrying the grading choices the data config makes
    (GSM8K: exact or numeric); None where the task has none. ``rollout.ExampleSource`` applies it."""

    def load(self, path: str | Path) -> list[E]:
        """Examples from a local file in the task's public format."""
        return load_examples(path, self.parse_row)

    def load_sample(self) -> list[E]:
        """The tiny shipped sample (tests, demos)."""
        return self.load(sample_path(self.sample_file))

    def score(self, completions: list[str], examples: list[E], fmt: str) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, accuracies), each (B,) float64, for completions paired with their examples.

        Each completion's reward and accuracy are computed one after the other, so a task that caches its
        grading (MATH500) grades every completion once.
        """
        fmt = check_format(fmt)
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        scores = [
            (self.reward(c, e, fmt), self.accuracy(c, e, fmt)) for c, e in zip(completions, examples, strict=True)
        ]
        table = np.array(scores, dtype=np.float64).reshape(len(completions), 2)
        return table[:, 0].copy(), table[:, 1].copy()


def sample_path(name: str) -> Path:
    """Path of a shipped data file under dipod/assets/data/."""
    return Path(str(resources.files("dipod") / "assets" / "data" / name))
