"""MATH500: competition problems (``problem``, ``answer`` in LaTeX), graded with math-verify.

Reward (paper.md §4a): equivalence 2.0 when the predicted answer equals the reference under
math-verify, plus 0.5 when a ``\\boxed{...}`` sits inside the answer tags. Predictions are parsed with
math-verify's LaTeX extraction only (an ANTLR grammar, no ``eval``); text length is bounded and any
parsing failure scores 0.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dipod.language.tasks.base import Task
from dipod.language.tasks.data import as_text
from dipod.language.tasks.prompts import answer_in_tags, d1_completion, d1_prompt

CORRECT_REWARD = 2.0
BOXED_REWARD = 0.5
MAX_ANSWER_CHARS = 2000
"""Only this many trailing characters of a completion's answer are parsed (bounds the work)."""
TIMEOUT_S = 5
"""math-verify's per-call time limit in the main thread (its default)."""


@dataclass(frozen=True)
class MathExample:
    problem: str
    answer: str
    """Reference answer in LaTeX, without $ or \\boxed."""
    solution: str = ""


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


def equivalent(predicted: str, reference: str) -> bool:
    """Whether a LaTeX answer (boxed or plain) equals the reference under math-verify; False on any failure.

    math-verify's time limit uses ``signal.alarm``, which works in the main thread only: anywhere
    else it raises, and every answer would score 0. Outside the main thread (a thread pool grading
    rewards, a data-loader thread) it is therefore called without a time limit; the answer length
    bound (``MAX_ANSWER_CHARS``) still caps the work.
    """
    try:
        from math_verify import LatexExtractionConfig, parse, verify

        limit = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
        config = [LatexExtractionConfig()]
        gold = parse(f"${reference}$", extraction_config=config, parsing_timeout=limit)
        text = predicted[-MAX_ANSWER_CHARS:]
        if "\\boxed" not in text and "$" not in text:
            text = f"${text}$"
        pred = parse(text, extraction_config=config, parsing_timeout=limit)
        return bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=limit))
    except Exception:  # math-verify can fail in many ways on arbitrary text; a failure is a wrong answer
        return False


def reward(text: str, ex: MathExample, fmt: str) -> float:
    """Compact: 2.0 if equivalent. d1: 2.0 if the answer-tag content is equivalent, + 0.5 if it is boxed."""
    if fmt == "compact":
        return CORRECT_REWARD if equivalent(text, ex.answer) else 0.0
    answer = answer_in_tags(text)
    if answer is None:
        return 0.0
    score = CORRECT_REWARD if equivalent(answer, ex.answer) else 0.0
    return score + (BOXED_REWARD if "\\boxed{" in answer else 0.0)


def accuracy(text: str, ex: MathExample, fmt: str) -> float:
    answer = text if fmt == "compact" else answer_in_tags(text)
    return float(answer is not None and equivalent(answer, ex.answer))


TASK = Task(
    name="math500",
    parse_row=parse_row,
    prompt=prompt,
    target=target,
    reward=reward,
    accuracy=accuracy,
    generate=None,
    sample_file="math500.jsonl",
)
