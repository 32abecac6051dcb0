"""Reward components shared by the tasks: the d1 format rewards (strict, soft, XML count) and number parsing.

All functions take model text and return a float; none of them raises on any string, and none of
them executes the text.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Literal

from dipod.language.tasks.prompts import extract_xml_answer

STRICT_FORMAT = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
SOFT_FORMAT = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
"""d1's format patterns, verbatim. Both are applied with ``re.match`` (anchored at the start of the text)."""
_NUMBER = re.compile(
    r"[-+]?\$?\s*(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+)",
    re.ASCII,
)
"""A plain number: optional sign and dollar sign, ASCII digits with commas only between groups of three
(``1,200`` and ``12,345,678``, not ``1,8`` or ``12,34``), an optional decimal part or trailing point."""
MAX_NUMBER_CHARS = 64
"""Numbers longer than this are not parsed (bounds the work a hostile completion can cause)."""


def _format_match(pattern: str, text: str, dotall: bool) -> bool:
    return re.match(pattern, text, flags=re.DOTALL if dotall else 0) is not None


def strict_format_reward(text: str, weight: float = 0.5, *, dotall: bool = False) -> float:
    """``weight`` if the text is reasoning then answer, each tag on its own line, ending in a newline.

    As released (d1's ``strict_format_reward_func``, used by the DiPOD runs): ``re.match`` without
    ``re.DOTALL``, so ``.`` stops at newlines and the reasoning and the answer must each fit on one
    line. Multi-line reasoning, the usual case, scores 0: a quirk of the release, kept so that rewards
    match its runs. ``dotall=True`` lets ``.`` cross newlines (later d1 versions' fix).
    """
    return weight if _format_match(STRICT_FORMAT, text, dotall) else 0.0


def soft_format_reward(text: str, weight: float = 0.5, *, dotall: bool = False) -> float:
    """``weight`` if the text starts with a reasoning block followed by an answer block.

    As released (d1's ``soft_format_reward_func``): ``re.match`` (the text must start with
    ``<reasoning>``) without ``re.DOTALL``, so each block must sit on one line: the d1 format itself,
    with its tags on their own lines, scores 0. A quirk of the release, kept so that rewards match its
    runs; ``dotall=True`` lets ``.`` cross newlines (later d1 versions' fix).
    """
    return weight if _format_match(SOFT_FORMAT, text, dotall) else 0.0


XmlCount = Literal["d1", "spg"]


def xml_count_reward(text: str, *, variant: XmlCount = "d1") -> float:
    """Partial credit for each of the four tags on its own line (0.125 each), minus 0.001 per trailing char.

    The d1/GRPO "xmlcount" reward: it rewards the structure before the model gets the whole format
    right, and penalises text after the closing answer tag. ``variant="spg"`` is the copy in the release's
    SPG code, whose first penalty counts the text after ``\\n<answer>\\n`` (the answer and everything
    after it) instead of the text after ``\\n</answer>\\n``.
    """
    if variant not in ("d1", "spg"):
        raise ValueError(f"unknown xml count variant {variant!r}; expected 'd1' or 'spg'")
    after_answer = "\n</answer>\n" if variant == "d1" else "\n<answer>\n"
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split(after_answer)[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def parse_number(text: str) -> Fraction | None:
    """The number a short answer string states, exactly, or None.

    Accepted: ``1,234`` (commas only as thousands separators), ``$5``, ``-3.50``, ``+18``, ``018``, ``7.``
    and one sentence-ending period. Rejected (None): ``3 apples``, ``1/2``, ``1,8`` (a comma out of its
    place), and digits other than ASCII 0-9 (Arabic-Indic ``١٨``, fullwidth ``１８``, superscripts): GSM8K's
    answers are ASCII, and a model that writes other digits has not written the answer.
    """
    text = text.strip()
    if not text or len(text) > MAX_NUMBER_CHARS:
        return None
    text = text.removesuffix(".")  # one sentence-ending period: "18." and "18.0." state 18
    if not _NUMBER.fullmatch(text):
        return None
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def integer_reward(text: str, weight: float = 0.5) -> float:
    """``weight`` if the extracted answer is a string of digits (d1's ``int_reward``).

    As released, ``str.isdigit`` decides, so non-ASCII digits (Arabic-Indic, fullwidth, superscripts) earn
    this format credit too; correctness never counts them as the number (``parse_number``).
    """
    return weight if extract_xml_answer(text).isdigit() else 0.0


def finite(x: float) -> float:
    """``x`` if finite, else 0.0: a reward is always a finite number."""
    return x if math.isfinite(x) else 0.0
