"""Prompt formats: d1's reasoning/answer XML format for real LLMs, and compact formats for the tiny model.

The d1 format asks the model to answer as::

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

and rewards read the text between the answer tags. Compact formats (per task, in each task module)
drop all instructions so a small character-level model can learn the task from a few thousand
examples: e.g. Sudoku's prompt is the 16 puzzle digits and its completion the 16 solution digits.
"""

from __future__ import annotations

from typing import Literal

PromptFormat = Literal["compact", "d1"]
PROMPT_FORMATS: tuple[str, ...] = ("compact", "d1")

D1_SYSTEM_PROMPT = """Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>"""
"""The instruction d1 prepends to every question (its wording of the reasoning/answer format)."""

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"


def d1_prompt(question: str) -> str:
    """The user message of the d1 format: format instruction, a blank line, then the question."""
    return f"{D1_SYSTEM_PROMPT}\n\n{question}"


def d1_completion(reasoning: str, answer: str) -> str:
    """A completion in the strict d1 format (used for SFT targets and tests)."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def extract_xml_answer(text: str) -> str:
    """The text after the last ``<answer>`` and before the following ``</answer>``, stripped (d1's rule).

    Without an answer tag the whole text is returned stripped, as d1 does; use ``answer_in_tags`` when
    the tags are required.
    """
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def answer_in_tags(text: str) -> str | None:
    """The content of the last complete ``<answer>...</answer>`` pair, stripped, or None.

    The same pairs as the release's ``re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)[-1]``: scanning
    left to right, each pair opens at the next ``<answer>`` and closes at the first ``</answer>`` after it,
    so ``<answer>a<answer>b</answer>`` gives ``a<answer>b``. Found with ``str.find`` in one left-to-right
    pass, so the time is linear in the text; the regex retries from every ``<answer>`` when no closing tag
    follows, which is quadratic (a 128 KB completion of open tags took 15 s).
    """
    found, start = None, 0
    while (opened := text.find(OPEN_TAG, start)) >= 0:
        closed = text.find(CLOSE_TAG, opened + len(OPEN_TAG))
        if closed < 0:
            break  # no closing tag after this opening one, so none after any later one either
        found = text[opened + len(OPEN_TAG) : closed]
        start = closed + len(CLOSE_TAG)
    return None if found is None else found.strip()


def check_format(fmt: str) -> PromptFormat:
    """``fmt`` if it is a known prompt format, else a ValueError listing them."""
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; choose one of: {', '.join(PROMPT_FORMATS)}")
    return fmt  # type: ignore[return-value]
