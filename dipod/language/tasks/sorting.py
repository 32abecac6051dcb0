"""Sorting: write the given two-digit numbers in ascending order. A generated task with long completions.

Its purpose is length: with 12 numbers the completion is 35 characters (``03,15,15,42,...``), so a
character-level policy's ELBO sums over 35 or more scored tokens and the bound has room to drift, where the
tiny Sudoku and Countdown completions are 16 and ~6 tokens. The answer is checked exactly and never executed.

Compact format: prompt ``83,15,42,...`` (the numbers as drawn, two digits each, comma-separated),
completion the same numbers sorted. d1 format: an instruction and the numbers; the sorted list inside the
answer tags. Reward and accuracy: the fraction of the positions holding the right number (a missing or
malformed field is wrong there), as Sudoku's fraction of blanks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dipod.language.tasks.base import Task
from dipod.language.tasks.data import as_int_list
from dipod.language.tasks.prompts import answer_in_tags, d1_completion, d1_prompt

MAX_NUMBERS = 32
"""Longest list accepted (from a data file or a config)."""


@dataclass(frozen=True)
class SortExample:
    nums: tuple[int, ...]
    """The numbers as given, each in 0-99."""

    @property
    def answer(self) -> tuple[int, ...]:
        return tuple(sorted(self.nums))


def show(nums: tuple[int, ...]) -> str:
    """``07,15,42``: two digits each, comma-separated."""
    return ",".join(f"{n:02d}" for n in nums)


def generate(n: int, rng: np.random.Generator, *, count: int = 12) -> list[SortExample]:
    """``n`` lists of ``count`` numbers drawn uniformly from 0-99 (repeats allowed)."""
    if not 2 <= count <= MAX_NUMBERS:
        raise ValueError(f"need 2 <= count <= {MAX_NUMBERS}, got {count}")
    return [SortExample(tuple(int(v) for v in rng.integers(0, 100, size=count))) for _ in range(n)]


def parse_row(row: dict, field) -> SortExample:
    """A JSONL row with ``nums``: a list of 2 to 32 integers in 0-99."""

    def numbers(value: object) -> tuple[int, ...]:
        nums = as_int_list(value)
        if not 2 <= len(nums) <= MAX_NUMBERS or any(not 0 <= v <= 99 for v in nums):
            raise ValueError(f"expected 2 to {MAX_NUMBERS} integers in 0-99")
        return nums

    return SortExample(field("nums", numbers))


def prompt(ex: SortExample, fmt: str) -> str:
    if fmt == "compact":
        return show(ex.nums)
    question = (
        f"Sort these numbers in ascending order: {show(ex.nums)}. Give the sorted numbers in the answer, "
        "two digits each, separated by commas."
    )
    return d1_prompt(question)


def target(ex: SortExample, fmt: str) -> str:
    if fmt == "compact":
        return show(ex.answer)
    return d1_completion(f"Order the {len(ex.nums)} numbers from smallest to largest.", show(ex.answer))


def answer_fields(text: str, fmt: str, count: int) -> list[str]:
    """The first ``count`` comma-separated fields of the answer (compact: the whole text; d1: inside the last
    answer-tag pair), stripped."""
    answer = text if fmt == "compact" else answer_in_tags(text)
    if answer is None:
        return []
    return [field.strip() for field in answer.split(",", count)[:count]]


def reward(text: str, ex: SortExample, fmt: str) -> float:
    """Fraction of positions whose field is the right number written with two ASCII digits."""
    fields = answer_fields(text, fmt, len(ex.nums))
    right = sum(1 for field, want in zip(fields, ex.answer, strict=False) if field == f"{want:02d}")
    return right / len(ex.nums)


def accuracy(text: str, ex: SortExample, fmt: str) -> float:
    """As the reward: the fraction of positions right."""
    return reward(text, ex, fmt)


TASK = Task(
    name="sort",
    parse_row=parse_row,
    prompt=prompt,
    target=target,
    reward=reward,
    accuracy=accuracy,
    generate=generate,
    generate_options=lambda data: {"count": data.sort_numbers},
    sample_file="sort.jsonl",
)
