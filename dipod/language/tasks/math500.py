"""MATH500: competition problems (``problem``, ``answer`` in LaTeX), graded with math-verify.

Reward (as the DiPOD paper describes it): equivalence 2.0 when the predicted answer equals the reference under
math-verify, plus 0.5 when a ``\\boxed{...}`` sits inside the answer tags. Predictions are parsed with
math-verify's LaTeX extraction only (an ANTLR grammar, no ``eval``).

Grading is bounded: each answer is graded once (``reward`` and ``accuracy`` share the result), in a
child process (``bounded.BoundedWorker``) that is killed past ``MathExample.grading_timeout_s`` seconds
of wall-clock time (``language.data.math500_grading_timeout_s``, 2 s by default) and fails past
``MEMORY_BYTES`` of address space, in any thread or process; a time-out, an out-of-memory or any failure
grades the answer wrong. Only the last ``MAX_ANSWER_CHARS`` characters of an answer are graded. Hostile
LaTeX (power towers, fractions nested 50 deep) took ~5 s and +500 MB per unbounded math-verify call.

Differences from the release (``correctness_reward_func_math`` + ``boxed_and_answer_tags_format_reward``):
- correctness: the release compares the last ``\\boxed{}`` anywhere in the completion with the last one
  of the reference solution under ``is_equiv`` (string normalisation, from the MATH benchmark's code);
  dipod grades the answer-tag content (d1) or the whole text (compact) with math-verify, which also
  accepts equal values written differently (``\\frac{10}{12}`` for ``\\frac{5}{6}``).
- format: the release adds 0.5 for answer tags plus 0.25 (0.5 when its ``"\\boxed" in r`` test fires,
  which it almost never does: ``"\\b"`` there is a backspace), so 0.75 with tags and 0.25 without;
  dipod adds 0.5 when a ``\\boxed{`` sits inside the answer tags, as the DiPOD paper describes the reward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dipod.language.tasks.base import Task
from dipod.language.tasks.bounded import BoundedWorker
from dipod.language.tasks.data import as_text
from dipod.language.tasks.prompts import answer_in_tags, d1_completion, d1_prompt

CORRECT_REWARD = 2.0
BOXED_REWARD = 0.5
MAX_ANSWER_CHARS = 2000
"""Only this many trailing characters of an answer are graded: a final answer is far shorter, and the
grader's work grows with the text."""
DEFAULT_TIMEOUT_S = 2.0
"""Wall-clock limit of one answer's grading (``language.data.math500_grading_timeout_s``): legitimate
answers grade in milliseconds, math-verify's own default limit is 5 s per parse or comparison."""
MEMORY_BYTES = 1 << 30
"""Address-space limit of the grading process (1 GiB): its interpreter, sympy and math-verify take about
0.1 GiB, a legitimate answer a few MB more; one hostile answer took +0.5 GB unbounded."""
_WORKER = BoundedWorker(Path(__file__).with_name("math_worker.py"), memory_bytes=MEMORY_BYTES)


@dataclass(frozen=True)
class MathExample:
    problem: str
    answer: str
    """Reference answer in LaTeX, without $ or \\boxed."""
    solution: str = ""
    grading_timeout_s: float = DEFAULT_TIMEOUT_S
    """Wall-clock limit of one answer's grading, in seconds."""


def parse_row(row: dict, field) -> MathExample:
    solution = row.get("solution")
    return MathExample(field("problem", as_text), field("answer", lambda v: as_text(str(v))), solution or "")


def prompt(ex: MathExample, fmt: str) -> str:
    if fmt == "compact":
        return ex.problem
    return d1_prompt(ex.problem + "\nPut the final answer in \\boxed{} inside the answer tags.")


def target(ex: MathExample, fmt: str) -> str:
    if fmt == "compact":
        return ex.answer
    return d1_completion(ex.solution or "Work it out.", f"\\boxed{{{ex.answer}}}")


def with_data_options(ex: MathExample, data: Any) -> MathExample:
    """``ex`` graded within ``data.math500_grading_timeout_s`` (``DataConfig``)."""
    return replace(ex, grading_timeout_s=data.math500_grading_timeout_s)


@functools.lru_cache(maxsize=1024)
def equivalent(predicted: str, reference: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a LaTeX answer (boxed or plain) equals the reference under math-verify; False on a time-out,
    out of memory, or any failure.

    Runs in the bounded grading process, on the last ``MAX_ANSWER_CHARS`` characters of ``predicted``.
    Results are cached, so ``reward`` and ``accuracy`` of one completion grade it once. Raises
    ``bounded.WorkerStartError`` only when the grading process cannot start (a broken environment).
    """
    if not isinstance(predicted, str) or not isinstance(reference, str):
        return False
    args = [predicted[-MAX_ANSWER_CHARS:], reference[-MAX_ANSWER_CHARS:]]
    return _WORKER.call("equivalent", args, timeout_s=timeout_s, default=False) is True


def _answer(text: str, fmt: str) -> str | None:
    return text if fmt == "compact" else answer_in_tags(text)


def reward(text: str, ex: MathExample, fmt: str) -> float:
    """Compact: 2.0 if equivalent. d1: 2.0 if the answer-tag content is equivalent, + 0.5 if it is boxed."""
    answer = _answer(text, fmt)
    if answer is None:
        return 0.0
    score = CORRECT_REWARD if equivalent(answer, ex.answer, timeout_s=ex.grading_timeout_s) else 0.0
    boxed = fmt == "d1" and "\\boxed{" in answer
    return score + (BOXED_REWARD if boxed else 0.0)


def accuracy(text: str, ex: MathExample, fmt: str) -> float:
    """1 if the answer is equivalent to the reference (the grading ``reward`` did, from the cache)."""
    answer = _answer(text, fmt)
    return float(answer is not None and equivalent(answer, ex.answer, timeout_s=ex.grading_timeout_s))


TASK = Task(
    name="math500",
    parse_row=parse_row,
    prompt=prompt,
    target=target,
    reward=reward,
    accuracy=accuracy,
    generate=None,
    sample_file="math500.jsonl",
    with_data_options=with_data_options,
)
