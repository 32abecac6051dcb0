"""GSM8K: grade-school word problems with a numeric answer (openai/gsm8k fields ``question``, ``answer``).

The reference ``answer`` is worked reasoning ending in ``#### N``. Reward (the DiPOD release's, d1's five
functions summed): correctness 2.0, integer 0.5 (the answer is a digit string), strict format 0.5, soft
format 0.5, and the XML-count partial credit (up to 0.5). The format rewards match with the release's
semantics (``re.match``, no ``re.DOTALL``), so they do not fire on multi-line reasoning; see
``rewards.strict_format_reward``.

Correctness is graded one of two ways (``GSM8KExample.grading``, set by ``language.data.gsm8k_grading``):
- ``exact`` (default, the release's ``correctness_reward_func``): the extracted answer, stripped, equals
  the text after ``####``, stripped, character for character. ``$18``, ``18.0``, ``+18``, ``018`` or
  ``1200`` against ``1,200`` are wrong.
- ``numeric``: both sides parse as the same number (``rewards.parse_number``: ASCII digits, commas only
  as thousands separators, optional sign, dollar sign and decimal part), so all of the above are right,
  while ``1,8`` and non-ASCII digits are not numbers at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from dipod.language.tasks.base import Task
from dipod.language.tasks.data import as_text
from dipod.language.tasks.prompts import d1_completion, d1_prompt, extract_xml_answer
from dipod.language.tasks.rewards import (
    XmlCount,
    integer_reward,
    parse_number,
    soft_format_reward,
    strict_format_reward,
    xml_count_reward,
)

CORRECT_REWARD = 2.0
_CALCULATOR = re.compile(r"<<[^>]*>>")
Grading = Literal["exact", "numeric"]
GRADINGS: tuple[str, ...] = ("exact", "numeric")


@dataclass(frozen=True)
class GSM8KExample:
    question: str
    answer: str
    """The final answer as written after '####', stripped (commas kept): what the release compares with."""
    reasoning: str = ""
    """The worked solution before '####', calculator annotations removed."""
    grading: Grading = "exact"
    """How correctness is graded: ``exact`` string match (the release) or ``numeric`` equivalence."""
    xml_count: XmlCount = "d1"
    """Which copy of the XML-count reward: the release's d1 code (FPO runs) or its SPG code (SPG runs)."""

    def __post_init__(self) -> None:
        if self.grading not in GRADINGS:
            raise ValueError(f"unknown GSM8K grading {self.grading!r}; choose one of: {', '.join(GRADINGS)}")
        if self.xml_count not in ("d1", "spg"):
            raise ValueError(f"unknown GSM8K xml_count {self.xml_count!r}; choose one of: d1, spg")


def split_answer(text: str) -> tuple[str, str]:
    """(reasoning, final answer) of a GSM8K ``answer`` field; the final answer must be a number.

    The final answer is the text after the first ``####``, stripped, as the release's
    ``extract_hash_answer`` reads it.
    """
    if "####" not in text:
        raise ValueError("expected '#### <number>' at the end of the answer")
    reasoning, final = text.split("####")[:2]
    final = final.strip()
    if parse_number(final) is None:
        raise ValueError(f"the text after '####' is not a number: {final!r}")
    return _CALCULATOR.sub("", reasoning).strip(), final


def parse_row(row: dict, field) -> GSM8KExample:
    question = field("question", as_text)
    reasoning, final = field("answer", lambda v: split_answer(as_text(v)))
    return GSM8KExample(question, final, reasoning)


def prompt(ex: GSM8KExample, fmt: str) -> str:
    return ex.question if fmt == "compact" else d1_prompt(ex.question)


def target(ex: GSM8KExample, fmt: str) -> str:
    if fmt == "compact":
        return ex.answer
    return d1_completion(ex.reasoning or "Compute step by step.", ex.answer)


def with_data_options(ex: GSM8KExample, data: Any) -> GSM8KExample:
    """``ex`` graded as ``data.gsm8k_grading`` and ``data.gsm8k_xml_count`` (``DataConfig``) say."""
    return replace(ex, grading=data.gsm8k_grading, xml_count=data.gsm8k_xml_count)


def is_correct(text: str, ex: GSM8KExample, fmt: str) -> bool:
    """Whether the extracted answer is the reference: the same string (``exact``) or number (``numeric``).

    The extracted answer is the whole text (compact) or d1's ``extract_xml_answer`` (the text after the
    last ``<answer>``, or the whole text without one), stripped.
    """
    answer = text.strip() if fmt == "compact" else extract_xml_answer(text)
    if ex.grading == "exact":
        return answer == ex.answer
    value = parse_number(answer)
    return value is not None and value == parse_number(ex.answer)


def reward(text: str, ex: GSM8KExample, fmt: str) -> float:
    """Sum of d1's GSM8K reward functions (compact format: correctness only)."""
    correct = CORRECT_REWARD if is_correct(text, ex, fmt) else 0.0
    if fmt == "compact":
        return correct
    return (
        correct
        + integer_reward(text)
        + strict_format_reward(text)
        + soft_format_reward(text)
        + xml_count_reward(text, variant=ex.xml_count)
    )


def accuracy(text: str, ex: GSM8KExample, fmt: str) -> float:
    return float(is_correct(text, ex, fmt))


TASK = Task(
    name="gsm8k",
    parse_row=parse_row,
    prompt=prompt,
    target=target,
    reward=reward,
    accuracy=accuracy,
    generate=None,
    sample_file="gsm8k.jsonl",
    with_data_options=with_data_options,
)
