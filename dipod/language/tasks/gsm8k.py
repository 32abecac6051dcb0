"""GSM8K: grade-school word problems with a numeric answer (openai/gsm8k fields ``question``, ``answer``).

The reference ``answer`` is worked reasoning ending in ``#### N``. Reward (paper.md §4a, d1's five
functions summed): correctness 2.0 (the answer equals N as a number), integer 0.5 (the answer is a
digit string), strict format 0.5, soft format 0.5, and the XML-count partial credit (up to 0.5).
The format rewards match with the release's semantics (``re.match``, no ``re.DOTALL``), so they do not
fire on multi-line reasoning; see ``rewards.strict_format_reward``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dipod.language.tasks.base import Task
from dipod.language.tasks.data import as_text
from dipod.language.tasks.prompts import d1_completion, d1_prompt, extract_xml_answer
from dipod.language.tasks.rewards import (
    integer_reward,
    parse_number,
    soft_format_reward,
    strict_format_reward,
    xml_count_reward,
)

CORRECT_REWARD = 2.0
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class GSM8KExample:
    question: str
    answer: str
    """The final numeric answer as written after '####' (commas removed)."""
    reasoning: str = ""
    """The worked solution before '####', calculator annotations removed."""


def split_answer(text: str) -> tuple[str, str]:
    """(reasoning, final answer) of a GSM8K ``answer`` field; the final answer must be a number."""
    if "####" not in text:
        raise ValueError("expected '#### <number>' at the end of the answer")
    reasoning, final = text.rsplit("####", 1)
    final = final.strip().replace(",", "")
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


def is_correct(text: str, ex: GSM8KExample, fmt: str) -> bool:
    """Whether the extracted answer states the reference number (exact rational comparison)."""
    answer = text.strip() if fmt == "compact" else extract_xml_answer(text)
    value = parse_number(answer)
    return value is not None and value == parse_number(ex.answer)


def reward(text: str, ex: GSM8KExample, fmt: str) -> float:
    """Sum of d1's GSM8K reward functions (compact format: correctness only)."""
    correct = CORRECT_REWARD if is_correct(text, ex, fmt) else 0.0
    if fmt == "compact":
        return correct
    return (
        correct + integer_reward(text) + strict_format_reward(text) + soft_format_reward(text) + xml_count_reward(text)
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
)
