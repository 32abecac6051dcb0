"""Reward components shared by the tasks: the d1 format rewards (strict, soft, XML count) and number parsing.

All functions take model text and return a float; none of them raises on any string, and none of
them executes the text.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from dipod.language.tasks.prompts import extract_xml_answer

STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n?$", re.DOTALL)
SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
MAX_NUMBER_CHARS = 64
"""Numbers longer than this are not parsed (bounds the work a hostile completion can cause)."""


def strict_format_reward(text: str, weight: float = 0.5) -> float:
    """``weight`` if the whole text is exactly reasoning then answer, each tag on its own line."""
    return weight if STRICT_FORMAT.match(text) else 0.0


def soft_format_reward(text: str, weight: float = 0.5) -> float:
    """``weight`` if a reasoning block is followed by an answer block anywhere in the text."""
    return weight if SOFT_FORMAT.search(text) else 0.0


def xml_count_reward(text: str) -> float:
    """Partial credit for each of the four tags on its own line (0.125 each), minus 0.001 per trailing char.

    The d1/GRPO "xmlcount" reward: it rewards the structure before the model gets the whole format
    right, and penalises text after the closing answer tag.
    """
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def parse_number(text: str) -> Fraction | None:
    """The number a short answer string states ('1,234', '$5', '-3.50', '7.'), exactly, or None.

    Only a single number (with optional sign, currency sign and thousands commas) is accepted, so
    '3 apples' or '1/2' are None; GSM8K answers are plain numbers.
    """
    text = text.strip().rstrip(".").strip()
    if not text or len(text) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> Fraction | None:
    """The last number that appears in free text, or None (fallback answer extraction)."""
    found = _NUMBER.findall(text[-4 * MAX_NUMBER_CHARS * 16 :])
    for candidate in reversed(found):
        value = parse_number(candidate)
        if value is not None:
            return value
    return None


def integer_reward(text: str, weight: float = 0.5) -> float:
    """``weight`` if the extracted answer is a string of digits (d1's ``int_reward``)."""
    return weight if extract_xml_answer(text).isdigit() else 0.0


def finite(x: float) -> float:
    """``x`` if finite, else 0.0: a reward is always a finite number."""
    return x if math.isfinite(x) else 0.0
