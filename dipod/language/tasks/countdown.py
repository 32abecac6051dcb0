"""Countdown: reach ``target`` with + - * / using each of ``nums`` exactly once.

Data: the Countdown-Tasks-3to4 fields (``nums`` list of ints, ``target`` int), JSONL or parquet.
Reward (the DiPOD release's, d1's ``compute_score``): 1.0 for a correct equation, else the format score 0.1
whenever an answer was extracted, 0 when there is none. In the d1 format the answer is the content of
the last ``<answer>...</answer>`` pair, so tags holding anything (a wrong value, wrong numbers, text
that does not parse, nothing) score 0.1 and no tags score 0, as released. In the compact format the
whole completion is the answer and only a well-formed expression earns the format score. Answers are
parsed by ``arith.evaluate`` and never executed.

Grading against the release's ``compute_score`` (which checks the numbers with ``re.findall(r"\\d+")``
and then ``eval``s text made of digits, ``+-*/().`` and spaces):
- the same: + - * / and parentheses, the 1e-5 tolerance on the value (here on the exact rational value,
  so no float rounding), leading zeros wrong (Python's ``eval`` rejects ``03``), division by zero wrong,
  each given number used exactly once, a trailing ``= value`` wrong.
- different, each scored 0.1 here where the release can score 1.0: unary minus (``-3+5*2``), powers
  (``**``), floor division (``//``), and decimals (``2.5``, which the release reads as the numbers 2 and 5).
  The task states the four operations; these are outside it, and parsing (not ``eval``) keeps it so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from dipod.language.tasks.arith import evaluate
from dipod.language.tasks.base import Task
from dipod.language.tasks.data import as_int, as_int_list
from dipod.language.tasks.prompts import answer_in_tags, d1_completion, d1_prompt

CORRECT_REWARD = 1.0
FORMAT_REWARD = 0.1
TOLERANCE = Fraction(1, 100_000)
"""An equation is correct when its value is within 1e-5 of the target, as the release's ``compute_score``."""
OPS = "+-*/"


@dataclass(frozen=True)
class CountdownExample:
    nums: tuple[int, ...]
    target: int
    solution: str | None = None
    """A known equation reaching the target (generated examples); None for file examples."""


def parse_row(row: dict, field) -> CountdownExample:
    """A Countdown-Tasks-3to4 row: ``nums`` (list of ints) and ``target`` (int)."""

    def numbers(value: object) -> tuple[int, ...]:
        nums = as_int_list(value)
        if any(n < 0 for n in nums):
            raise ValueError("numbers must be non-negative")
        return nums

    return CountdownExample(field("nums", numbers), field("target", as_int))


def _combine(a: tuple[Fraction, str], b: tuple[Fraction, str]) -> list[tuple[Fraction, str]]:
    (va, ea), (vb, eb) = a, b
    out = [(va + vb, f"({ea}+{eb})"), (va * vb, f"({ea}*{eb})"), (va - vb, f"({ea}-{eb})"), (vb - va, f"({eb}-{ea})")]
    if vb != 0:
        out.append((va / vb, f"({ea}/{eb})"))
    if va != 0:
        out.append((vb / va, f"({eb}/{ea})"))
    return out


def solve(nums: tuple[int, ...], target: int) -> str | None:
    """An equation using each number once that equals ``target``, by exhaustive search (for <= 5 numbers)."""

    def search(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        for i, j in itertools.combinations(range(len(items)), 2):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            for combined in _combine(items[i], items[j]):
                found = search([*rest, combined])
                if found is not None:
                    return found
        return None

    found = search([(Fraction(n), str(n)) for n in nums])
    return None if found is None else _strip_outer(found)


def _strip_outer(expr: str) -> str:
    """Drop one pair of parentheses that encloses the whole expression."""
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        return expr[1:-1]
    return expr


def generate(
    n: int, rng: np.random.Generator, *, num_numbers: int = 3, max_number: int = 9, max_target: int = 99
) -> list[CountdownExample]:
    """``n`` solvable puzzles: random numbers in [1, max_number], a random left-to-right equation over
    them with exact integer steps, and its value (in [1, max_target]) as the target."""
    examples = []
    while len(examples) < n:
        nums = tuple(int(v) for v in rng.integers(1, max_number + 1, size=num_numbers))
        order = rng.permutation(num_numbers)
        value, expr = Fraction(nums[order[0]]), str(nums[order[0]])
        for idx in order[1:]:
            op = OPS[int(rng.integers(len(OPS)))]
            operand = nums[idx]
            if op == "/" and (value % operand != 0):
                op = "+"
            value = {"+": value + operand, "-": value - operand, "*": value * operand, "/": value / operand}[op]
            expr = f"({expr}){op}{operand}" if op in "*/" and any(c in expr for c in "+-") else f"{expr}{op}{operand}"
        if value.denominator == 1 and 1 <= value <= max_target:
            examples.append(CountdownExample(nums, int(value), expr))
    return examples


def prompt(ex: CountdownExample, fmt: str) -> str:
    """Compact: ``3,5,7:22``. d1: the instruction, the numbers and the target."""
    if fmt == "compact":
        return ",".join(map(str, ex.nums)) + ":" + str(ex.target)
    question = (
        f"Using the numbers {list(ex.nums)}, create an equation that equals {ex.target}. You can use basic "
        "arithmetic operations (+, -, *, /) and each number must be used exactly once. Give only the "
        "expression in the answer, for example (1 + 2) / 3."
    )
    return d1_prompt(question)


def target(ex: CountdownExample, fmt: str) -> str:
    """A correct equation (the stored one or one found by ``solve``); empty if the puzzle has none."""
    equation = ex.solution or solve(ex.nums, ex.target) or ""
    if fmt == "compact":
        return equation
    return d1_completion(f"Combine {list(ex.nums)} to reach {ex.target}.", equation)


def answer_text(text: str, fmt: str) -> str | None:
    """The equation part of a completion, or None when there is none.

    Compact: the whole text, with a trailing ``= value`` dropped. d1: the content of the last answer-tag
    pair, as released (a trailing ``= value`` stays, and makes the equation wrong, as in the release).
    """
    if fmt == "compact":
        return text.split("=")[0].strip()
    return answer_in_tags(text)


def reward(text: str, ex: CountdownExample, fmt: str) -> float:
    """1.0 correct; otherwise 0.1 for an extracted answer (d1: any answer tags; compact: a parseable
    expression); 0.0 without one."""
    answer = answer_text(text, fmt)
    if answer is None:
        return 0.0
    parsed = evaluate(answer)
    if parsed is not None and sorted(parsed.numbers) == sorted(ex.nums) and abs(parsed.value - ex.target) < TOLERANCE:
        return CORRECT_REWARD
    if parsed is None and fmt == "compact":
        return 0.0
    return FORMAT_REWARD


def accuracy(text: str, ex: CountdownExample, fmt: str) -> float:
    """1 if the equation uses each number once and equals the target."""
    return float(reward(text, ex, fmt) == CORRECT_REWARD)


TASK = Task(
    name="countdown",
    parse_row=parse_row,
    prompt=prompt,
    target=target,
    reward=reward,
    accuracy=accuracy,
    generate=generate,
    generate_options=lambda data: {
        "num_numbers": data.countdown_numbers,
        "max_number": data.countdown_max_number,
        "max_target": data.countdown_max_target,
    },
    sample_file="countdown.jsonl",
)
