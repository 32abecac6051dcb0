"""Tasks with verifiable rewards: 4x4 Sudoku, Countdown, sorting, GSM8K, MATH500, chosen by name from ``TASKS``."""

from __future__ import annotations

from dipod.language.tasks import countdown, gsm8k, math500, sorting, sudoku
from dipod.language.tasks.base import Task, sample_path
from dipod.language.tasks.data import DataError, load_examples, read_rows
from dipod.language.tasks.prompts import PROMPT_FORMATS, PromptFormat

TASKS: dict[str, Task] = {
    "sudoku": sudoku.TASK,
    "countdown": countdown.TASK,
    "sort": sorting.TASK,
    "gsm8k": gsm8k.TASK,
    "math500": math500.TASK,
}


def get_task(name: str) -> Task:
    """The registered task ``name``, or an error listing the choices."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}") from None


__all__ = [
    "PROMPT_FORMATS",
    "TASKS",
    "DataError",
    "PromptFormat",
    "Task",
    "get_task",
    "load_examples",
    "read_rows",
    "sample_path",
]
