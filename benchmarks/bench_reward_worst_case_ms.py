"""Worst-case grading time per task over a fixed hostile set of completions, in milliseconds.

Each completion is graded as a rollout grades it, ``Task.score`` (reward and accuracy together), in both
prompt formats, and timed wall-clock. The hostile set is fixed: answer tags that never close (128 KB),
a megabyte inside the tags, parentheses 5,000 deep, number strings with commas and non-ASCII digits,
LaTeX power towers 200 high, fractions nested 50 deep, long sums and products, plus random strings
built from the same pieces (seeded). MATH500 answers go to the bounded grading process, so their worst
case is its time limit (``language.data.math500_grading_timeout_s``, 2 s) plus replacing a killed child.

Figures (ms): ``<task>_p99`` and ``<task>_max`` for sudoku, countdown, gsm8k and math500;
``math500_timeout_limit`` (the limit the run used); and the reference ``regex_extraction_max``: the
release's ``re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)`` on the same set (quadratic when tags
never close), against dipod's linear scan ``answer_extraction_max``.
"""

from __future__ import annotations

import re
import time

import numpy as np

from dipod.language.tasks import get_task, math500
from dipod.language.tasks.prompts import answer_in_tags

TASKS = ("sudoku", "countdown", "gsm8k", "math500")
PIECES = [
    "<answer>", "</answer>", "<reasoning>", "</reasoning>", "\n", " ", "####", "\\boxed{", "\\frac{", "}", "{",
    "^{", "(", ")", "+", "-", "*", "/", "**", "//", ".", ",", "$", "=", "0", "1", "7", "12", "1,200", "99999",
    "\u0661", "\uff11", "\u00b2", "x", "__import__('os')", "nan", "inf", "\x00", "1e309", "\\sqrt{", "!",
]  # fmt: skip


def _tagged(answer: str) -> str:
    return f"<reasoning>\nwork\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def hostile_set(quick: bool) -> list[str]:
    """The fixed hostile completions (the random part seeded), smaller sizes under ``quick``."""
    scale = 4 if quick else 1
    texts = [
        "<answer>" * ((1 << 14) // scale),  # unclosed tags: the DOTALL regex is quadratic here
        "<answer>" + "x" * ((1 << 20) // scale),  # a megabyte that never closes
        _tagged("x" * ((1 << 20) // scale)),
        _tagged("(" * 5000 + "1" + ")" * 5000),
        _tagged("9" * 400),
        _tagged(",".join(["123"] * 2000)),
        _tagged("\u0661\u0668" * 500),
        "<reasoning>" * 10_000,
        _tagged("2^{" * 200 + "2" + "}" * 200),
        _tagged("\\boxed{" + "\\frac{1}{" * 50 + "2" + "}" * 50 + "}"),
        _tagged("+".join(["x^{99}"] * 300)),
        _tagged("*".join(["(x+1)"] * 200)),
        _tagged("\\boxed{" + "9" * 1000 + "!}"),
        _tagged("\\sqrt{" * 100 + "2" + "}" * 100),
    ]
    rng = np.random.default_rng(0)
    for _ in range(100 if quick else 400):
        k = int(rng.integers(0, 200))
        texts.append("".join(PIECES[i] for i in rng.integers(0, len(PIECES), size=k)))
    return texts


def _time_ms(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000.0


def run(quick: bool) -> dict:
    texts = hostile_set(quick)
    figures: dict[str, float] = {}
    for name in TASKS:
        task = get_task(name)
        example = task.load_sample()[0]
        task.score([task.target(example, "d1")], [example], "d1")  # starts MATH500's grading process
        times = [_time_ms(task.score, [text], [example], fmt) for text in texts for fmt in ("compact", "d1")]
        figures[f"{name}_p99"] = float(np.percentile(times, 99))
        figures[f"{name}_max"] = float(max(times))
    figures["math500_timeout_limit"] = math500.DEFAULT_TIMEOUT_S * 1000.0
    tag = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
    figures["regex_extraction_max"] = max(_time_ms(tag.findall, text) for text in texts)
    figures["answer_extraction_max"] = max(_time_ms(answer_in_tags, text) for text in texts)
    return {
        "figures": figures,
        "reference": (
            f"{len(texts)} fixed hostile completions x 2 prompt formats per task; tag extraction against the "
            "release's DOTALL regex on the same set"
        ),
    }
