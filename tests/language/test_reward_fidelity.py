"""Rewards against the release's grading rules, hostile inputs, and the bounded MATH500 grader.

Each case names what the release's ``reward_func.py`` gives (d1 = the DiPOD release's language code) and
checks dipod gives the same, or the documented difference.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dipod.language.config import DataConfig
from dipod.language.rollout import ExampleSource
from dipod.language.tasks import countdown, get_task, gsm8k, math500, sample_path, sudoku
from dipod.language.tasks.arith import evaluate
from dipod.language.tasks.bounded import BoundedWorker, WorkerStartError
from dipod.language.tasks.prompts import answer_in_tags, d1_completion
from dipod.language.tasks.rewards import integer_reward, parse_number

# --------------------------------------------------------------------------- GSM8K


def _d1(answer: str) -> str:
    return d1_completion("work", answer)


@pytest.mark.parametrize(
    ("written", "reference", "exact", "numeric"),
    [
        ("18", "18", True, True),
        ("$18", "18", False, True),
        ("18.0", "18", False, True),
        ("18.", "18", False, True),
        ("+18", "18", False, True),
        ("018", "18", False, True),
        ("1200", "1,200", False, True),
        ("1,200", "1200", False, True),
        ("1,200", "1,200", True, True),
        ("-3.50", "-3.5", False, True),
        ("\u0661\u0668", "18", False, False),  # Arabic-Indic 18
        ("\uff11\uff18", "18", False, False),  # fullwidth 18
        ("1,8", "18", False, False),  # a comma out of its thousands place
        ("12,34", "1234", False, False),
        ("18 apples", "18", False, False),
        ("19", "18", False, False),
    ],
)
def test_gsm8k_exact_is_the_release_string_match_and_numeric_compares_numbers(written, reference, exact, numeric):
    for grading, expected in (("exact", exact), ("numeric", numeric)):
        ex = gsm8k.GSM8KExample(question="q", answer=reference, grading=grading)
        assert gsm8k.is_correct(_d1(written), ex, "d1") is expected, (grading, written)
        assert gsm8k.is_correct(written, ex, "compact") is expected, (grading, written)
        assert gsm8k.accuracy(_d1(written), ex, "d1") == float(expected)


def test_gsm8k_reward_components_of_the_release_for_a_non_ascii_answer():
    # release: correctness 0 ('١٨' != '18'), int 0.5 ('١٨'.isdigit()), strict 0.5, soft 0, xml 0.5
    ex = gsm8k.GSM8KExample(question="q", answer="18")
    text = "<reasoning>\nwork\n</reasoning>\n<answer>\n\u0661\u0668\n</answer>\n"
    assert integer_reward(text) == 0.5
    assert gsm8k.reward(text, ex, "d1") == pytest.approx(0.5 + 0.5 + 0.5)
    assert gsm8k.reward(text, gsm8k.GSM8KExample(question="q", answer="18", grading="numeric"), "d1") == 1.5


def test_gsm8k_reference_is_the_text_after_the_first_marker_as_written():
    reasoning, final = gsm8k.split_answer("A <<2*600=1200>>1200 pens.\n#### 1,200")
    assert (reasoning, final) == ("A 1200 pens.", "1,200")
    with pytest.raises(ValueError, match="not a number"):
        gsm8k.split_answer("x #### 1,8")
    with pytest.raises(ValueError, match="not a number"):
        gsm8k.split_answer("x #### \u0661\u0668")


def test_gsm8k_unknown_grading_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="exact, numeric"):
        gsm8k.GSM8KExample(question="q", answer="1", grading="fuzzy")


def test_parse_number_accepts_thousands_separators_only_in_their_place():
    assert parse_number("12,345,678") == 12345678
    assert parse_number("$1,200.50") == pytest.approx(1200.5)
    for bad in ("1,8", "1,2345", ",123", "123,", "1,,200", "\u0661\u0668", "\uff11\uff18", "\u00b2", "1e3", "0x10"):
        assert parse_number(bad) is None, bad


def test_example_source_applies_the_data_config_grading(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"question": "q", "answer": "r #### 1,200"}\n')
    task = get_task("gsm8k")
    for grading, code in (("exact", "spg"), ("numeric", "d1")):
        data = DataConfig(
            train_path=str(path), eval_path=str(path), eval_size=1, gsm8k_grading=grading, gsm8k_xml_count=code
        )
        source = ExampleSource(task, data)
        examples = [*source.eval_examples, *source.draw(3, np.random.default_rng(0))]
        assert {ex.grading for ex in examples} == {grading} and {ex.xml_count for ex in examples} == {code}
        rewards, _ = task.score(["1200"] * len(examples), examples, "compact")
        assert rewards.tolist() == [2.0 if grading == "numeric" else 0.0] * len(examples)


def test_data_config_grading_fields_are_checked():
    from pydantic import ValidationError

    assert DataConfig().gsm8k_grading == "exact" and DataConfig().math500_grading_timeout_s == 2.0
    with pytest.raises(ValidationError, match="gsm8k_grading"):
        DataConfig(gsm8k_grading="fuzzy")
    with pytest.raises(ValidationError, match="gsm8k_xml_count"):
        DataConfig(gsm8k_xml_count="trl")
    with pytest.raises(ValidationError, match="math500_grading_timeout_s"):
        DataConfig(math500_grading_timeout_s=0)


def test_example_source_applies_the_math500_time_limit():
    task = get_task("math500")
    shipped = str(sample_path(task.sample_file))
    data = DataConfig(train_path=shipped, eval_path=shipped, eval_size=2, math500_grading_timeout_s=0.75)
    source = ExampleSource(task, data)
    assert {ex.grading_timeout_s for ex in [*source.eval_examples, *source.train_pool]} == {0.75}


# --------------------------------------------------------------------------- Sudoku


SOLUTION = "1234341221434321"
PUZZLE = "1034301221404001"  # blanks at cells 1, 5, 11, 13, 14


def test_sudoku_reads_a_grid_after_long_text_inside_the_tags_as_the_release_does():
    ex = sudoku.SudokuExample(PUZZLE, SOLUTION)
    text = "<answer>" + "Here is the grid. " * 20 + SOLUTION + "</answer>"  # 360 characters of text first
    assert sudoku.reward(text, ex, "d1") == 1.0
    assert sudoku.reward("<answer>" + "x" * 100_000 + SOLUTION + "</answer>", ex, "d1") == 1.0


def test_sudoku_puzzle_without_blanks_scores_zero_as_released():
    ex = sudoku.SudokuExample(SOLUTION, SOLUTION)
    assert sudoku.reward(sudoku.target(ex, "d1"), ex, "d1") == 0.0
    assert sudoku.accuracy(SOLUTION, ex, "compact") == 0.0


def test_sudoku_non_ascii_digits_take_a_cell_as_released():
    ex = sudoku.SudokuExample(PUZZLE, SOLUTION)
    # a leading Arabic-Indic digit takes cell 0 and shifts every other digit one cell on
    assert sudoku.answer_digits("<answer>\u0661" + SOLUTION + "</answer>", "d1")[0] == "\u0661"
    assert sudoku.reward("<answer>\u0661" + SOLUTION + "</answer>", ex, "d1") < 1.0
    assert sudoku.reward("<answer>" + SOLUTION[:6] + "</answer>", ex, "d1") == pytest.approx(2 / 5)  # short: rest wrong


# --------------------------------------------------------------------------- Countdown


def _release_countdown_score(answer: str, nums: tuple[int, ...], target: int) -> float:
    """The release's ``compute_score`` rule, restated for the fixed strings of these tests (our own constants,
    so ``eval`` here runs no model text): numbers by ``\\d+``, allowed characters, ``eval``, 1e-5 tolerance."""
    import re

    if sorted(int(n) for n in re.findall(r"\d+", answer)) != sorted(nums):
        return 0.1
    if not re.match(r"^[\d+\-*/().\s]+$", answer):
        return 0.1
    try:
        value = eval(answer, {"__builtins__": None}, {})
    except Exception:
        return 0.1
    return 1.0 if abs(value - target) < 1e-5 else 0.1


@pytest.mark.parametrize(
    ("answer", "nums", "target"),
    [
        ("3*5+7", (3, 5, 7), 22),
        ("(7+5)*3-14", (3, 5, 7), 22),  # 14 is not a given number
        ("7*3+5/5", (3, 5, 7), 22),  # 5 used twice
        ("03*5+7", (3, 5, 7), 22),  # a leading zero: Python's eval raises on it
        ("00+3*5+7", (0, 3, 5, 7), 22),  # but accepts 00
        ("5*3+7 = 22", (3, 5, 7), 22),  # '=' and the target
        ("3*5/0", (3, 5, 0), 15),  # division by zero
        ("3*5+0", (3, 5, 0), 15),
        ("(3+5)/8*7", (3, 5, 8, 7), 7),
        ("3 * (5 + 7)", (3, 5, 7), 36),
        ("3*5+7", (3, 5, 7), 23),  # a wrong value
    ],
)
def test_countdown_agrees_with_the_release_on_the_four_operations(answer, nums, target):
    ex = countdown.CountdownExample(nums=nums, target=target)
    assert countdown.reward(f"<answer>{answer}</answer>", ex, "d1") == _release_countdown_score(answer, nums, target)


@pytest.mark.parametrize(
    ("answer", "nums", "target"),
    [
        ("-3+5*5", (3, 5, 5), 22),  # unary minus
        ("2**3+1", (2, 3, 1), 9),  # power
        ("7//2+5", (7, 2, 5), 8),  # floor division
        ("2.5*4", (2, 5, 4), 10),  # a decimal, read by the release as the numbers 2 and 5
    ],
)
def test_countdown_documented_differences_score_the_format_reward(answer, nums, target):
    ex = countdown.CountdownExample(nums=nums, target=target)
    assert _release_countdown_score(answer, nums, target) == 1.0
    assert countdown.reward(f"<answer>{answer}</answer>", ex, "d1") == countdown.FORMAT_REWARD


def test_countdown_uses_the_release_tolerance_on_the_exact_value():
    # 7 + 1/(9*8*6*4) = 7 + 1/1728: off by 5.8e-4, wrong; 7 + 1/(99*98*97*96) is within 1e-5: right
    near = countdown.CountdownExample(nums=(7, 1, 99, 98, 97, 96), target=7)
    assert countdown.reward("<answer>7+1/(99*98*97*96)</answer>", near, "d1") == 1.0
    far = countdown.CountdownExample(nums=(7, 1, 9, 8, 6, 4), target=7)
    assert countdown.reward("<answer>7+1/(9*8*6*4)</answer>", far, "d1") == countdown.FORMAT_REWARD


def test_arith_rejects_leading_zeros_but_not_zero():
    assert evaluate("03+1") is None
    assert evaluate("0+1").value == 1
    assert evaluate("00+1").value == 1  # Python accepts 00
    assert evaluate("10+1").value == 11


# --------------------------------------------------------------------------- answer-tag extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer> a </answer>", "a"),
        ("<answer>a</answer><answer>b</answer>", "b"),
        ("<answer>a<answer>b</answer>", "a<answer>b"),  # as re.findall: the pair opens at the first tag
        ("<answer>a</answer><answer>b", "a"),
        ("</answer><answer>a</answer>", "a"),
        ("<answer>", None),
        ("no tags", None),
        ("<answer>x\ny</answer>", "x\ny"),
    ],
)
def test_answer_in_tags_matches_the_release_regex(text, expected):
    import re

    found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    assert (found[-1].strip() if found else None) == expected
    assert answer_in_tags(text) == expected


def test_answer_in_tags_is_linear_on_unclosed_tags():
    # the DOTALL regex took 15 s on 128 KB of open tags; a linear scan takes milliseconds
    hostile = "<answer>" * (1 << 17)
    start = time.perf_counter()
    assert answer_in_tags(hostile) is None
    assert answer_in_tags(hostile + "</answer>") == "<answer>" * ((1 << 17) - 1)
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- bounded MATH500 grading


def test_math_hostile_latex_is_graded_wrong_within_the_time_limit():
    ex = math500.MathExample(problem="p", answer="3", grading_timeout_s=1.0)
    assert math500.accuracy("3", ex, "compact") == 1.0  # the grading process has started (not timed here)
    tower = "2^{" * 200 + "2" + "}" * 200
    start = time.perf_counter()
    assert math500.reward(d1_completion("r", tower), ex, "d1") == 0.0
    assert time.perf_counter() - start < 1.0 + 1.5  # the limit plus killing and reading back
    # the grader still works after a killed call
    assert math500.reward(d1_completion("r", "\\boxed{3}"), ex, "d1") == 2.5


def test_math_time_limit_holds_outside_the_main_thread():
    ex = math500.MathExample(problem="p", answer="3", grading_timeout_s=1.0)
    assert math500.accuracy("3", ex, "compact") == 1.0  # the grading process has started (not timed here)
    nested = "\\frac{1}{" * 60 + "2" + "}" * 60 + "+" + "2^{" * 150 + "2" + "}" * 150
    out: list[tuple[float, float]] = []

    def grade() -> None:
        start = time.perf_counter()
        out.append((math500.reward(nested, ex, "compact"), time.perf_counter() - start))

    worker = threading.Thread(target=grade)
    worker.start()
    worker.join(timeout=30)
    assert out and out[0][0] == 0.0 and out[0][1] < 2.5
    ok = []
    other = threading.Thread(target=lambda: ok.append(math500.accuracy("\\frac{6}{2}", ex, "compact")))
    other.start()
    other.join(timeout=30)
    assert ok == [1.0]


def test_math_reward_and_accuracy_grade_a_completion_once(monkeypatch):
    calls = []
    real = math500._WORKER.call

    def counting(name, args, **kw):
        calls.append(args)
        return real(name, args, **kw)

    monkeypatch.setattr(math500._WORKER, "call", counting)
    math500.equivalent.cache_clear()
    task = get_task("math500")
    ex = math500.MathExample(problem="p", answer="\\frac{5}{6}")
    texts = [d1_completion("r", f"\\boxed{{\\frac{{{k}}}{{12}}}}") for k in (10, 11, 10)]
    rewards, accuracy = task.score(texts, [ex] * 3, "d1")
    assert rewards.tolist() == [2.5, 0.5, 2.5] and accuracy.tolist() == [1.0, 0.0, 1.0]
    assert len(calls) == 2  # two distinct answers, each graded once


WORKER_SCRIPT = """
import json, os, resource, sys, time
limit = int(os.environ.get("DIPOD_WORKER_MEMORY_BYTES", "0"))
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
def allocate(mb): return len(bytearray(mb << 20))
FUNCTIONS = {"sleep": lambda s: time.sleep(s) or s, "allocate": allocate, "pid": os.getpid, "fail": lambda: 1 / 0}
time.sleep(1.0)  # imports that take a while, as sympy's do
print("ready", flush=True)
for line in sys.stdin:
    try:
        req = json.loads(line)
        reply = {"ok": True, "result": FUNCTIONS[req["name"]](*req["args"])}
    except BaseException:
        reply = {"ok": False}
    print(json.dumps(reply), flush=True)
"""


@pytest.fixture
def worker(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    bounded = BoundedWorker(script, memory_bytes=512 << 20)
    yield bounded
    bounded.close()


def test_bounded_worker_kills_a_call_past_its_time_limit_and_recovers(worker):
    first = worker.call("pid", [], timeout_s=30, default=None)
    time.sleep(1.5)  # the spare child finishes its 1 s of imports meanwhile
    for _ in range(2):
        start = time.perf_counter()
        assert worker.call("sleep", [30], timeout_s=0.5, default="timed out") == "timed out"
        assert time.perf_counter() - start < 0.9
        start = time.perf_counter()
        assert worker.call("sleep", [0], timeout_s=30, default=None) == 0
        assert time.perf_counter() - start < 0.9  # the warm spare took over: no 1 s of imports to wait for
        time.sleep(1.5)  # the new spare starts meanwhile
    second = worker.call("pid", [], timeout_s=30, default=None)
    assert first is not None and second is not None and first != second  # another child replaced the killed one


def test_bounded_worker_memory_limit_and_failures_return_the_default(worker):
    assert worker.call("allocate", [16], timeout_s=30, default=None) == 16 << 20
    assert worker.call("allocate", [2048], timeout_s=30, default="no memory") == "no memory"
    assert worker.call("fail", [], timeout_s=30, default="failed") == "failed"
    assert worker.call("allocate", [16], timeout_s=30, default=None) == 16 << 20  # the same child goes on


def test_bounded_worker_that_cannot_start_says_why(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import no_such_grading_module\n")
    broken = BoundedWorker(script, memory_bytes=512 << 20)
    with pytest.raises(WorkerStartError, match=r"broken\.py did not start(.|\n)*no_such_grading_module"):
        broken.call("anything", [], timeout_s=5, default=None)
    broken.close()


def test_bounded_worker_works_with_descriptors_past_1024(tmp_path):
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if hard == resource.RLIM_INFINITY else hard, hard))
    held = [os.dup(0) for _ in range(1100)]  # the worker's pipes now get descriptors above 1024
    try:
        script = tmp_path / "worker.py"
        script.write_text(WORKER_SCRIPT)
        bounded = BoundedWorker(script, memory_bytes=512 << 20)
        assert bounded.call("sleep", [0], timeout_s=30, default="failed") == 0
        bounded.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_bounded_worker_serves_several_threads(worker):
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(worker.call("sleep", [0.01], timeout_s=30, default=-1)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [0.01] * 4


# --------------------------------------------------------------------------- the release's rules on fuzzed text


def _release_xml_answer(text: str) -> str:
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def _release_gsm8k(text: str, reference: str, code: str = "d1") -> float:
    """The sum of the release's five GSM8K reward functions (``reward_func.py`` of its d1 or SPG code), restated."""
    import re

    answer = _release_xml_answer(text)
    total = 2.0 if answer == reference else 0.0
    total += 0.5 if answer.isdigit() else 0.0
    total += 0.5 if re.match(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", text) else 0.0
    total += 0.5 if re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text) else 0.0
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        after = "\n</answer>\n" if code == "d1" else "\n<answer>\n"  # the SPG copy splits on the opening tag
        count += 0.125 - len(text.split(after)[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125 - (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return total + count


def _release_sudoku(text: str, puzzle: str, solution: str) -> float:
    """The release's ``sudoku_reward_func`` for one completion, restated."""
    import re

    found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if not found:
        return 0.0
    digits = "".join(ch for ch in found[-1].strip() if ch.isdigit())
    if not digits:
        return 0.0
    digits = (digits + "0" * 16)[:16]
    blanks = [i for i in range(16) if puzzle[i] == "0"]
    return sum(digits[i] == solution[i] for i in blanks) / len(blanks) if blanks else 0.0


def test_gsm8k_exact_grading_equals_the_release_on_fuzzed_text():
    texts = [*_fuzz_strings(3000, seed=11), *(_d1(w) for w in ("18", "1,200", "1200", "$18", "18.0"))]
    for code in ("d1", "spg"):
        for reference in ("18", "1,200"):
            ex = gsm8k.GSM8KExample(question="q", answer=reference, xml_count=code)
            for text in texts:
                assert gsm8k.reward(text, ex, "d1") == pytest.approx(_release_gsm8k(text, reference, code)), text
    # the two copies differ: SPG's also penalises the 13 characters after the opening tag, "18\n</answer>\n"
    strict = _d1("18")
    assert _release_gsm8k(strict, "18", "spg") == pytest.approx(_release_gsm8k(strict, "18", "d1") - 0.013)


def test_sudoku_reward_equals_the_release_on_fuzzed_text():
    rng = np.random.default_rng(3)
    grids = ["".join(rng.choice(list("0123456789\u0661"), size=16)) for _ in range(300)]
    texts = [*_fuzz_strings(3000, seed=12), *(f"<answer>{g}</answer>" for g in grids), f"<answer>{SOLUTION}</answer>"]
    for puzzle in (PUZZLE, SOLUTION):
        ex = sudoku.SudokuExample(puzzle, SOLUTION)
        for text in texts:
            assert sudoku.reward(text, ex, "d1") == pytest.approx(_release_sudoku(text, puzzle, SOLUTION)), text


def test_countdown_differs_from_the_release_only_where_documented():
    # dipod and the release agree on every answer dipod's parser accepts; where the release scores 1.0 and
    # dipod does not, the answer uses a documented difference (unary minus, **, //, a decimal point); each
    # given number is used once, so the release's eval of ** stays small
    rng = np.random.default_rng(5)
    pieces = ["3", "5", "7", "03", "(", ")", "+", "-", "*", "/", "//", ".", " ", "=", "22"]
    for _ in range(5000):
        answer = "".join(pieces[i] for i in rng.integers(0, len(pieces), size=int(rng.integers(1, 12))))
        ours = countdown.reward(f"<answer>{answer}</answer>", CD, "d1")
        release = _release_countdown_score(answer, CD.nums, CD.target)
        if evaluate(answer) is not None:
            assert ours == release, answer
        elif release != ours:
            assert release == 1.0 and ours == countdown.FORMAT_REWARD, answer
            compact = answer.replace(" ", "")
            assert (
                "**" in compact
                or "//" in compact
                or "." in compact
                or compact.startswith("-")
                or "(-" in compact
                or any(op + "-" in compact for op in "+-*/")
            ), answer


CD = countdown.CountdownExample(nums=(3, 5, 7), target=22)


# --------------------------------------------------------------------------- fuzz (slow)


def _fuzz_strings(n: int, seed: int) -> list[str]:
    """``n`` distinct random strings built from the pieces rewards react to: tags, digits (ASCII and not),
    operators, LaTeX, code, control characters."""
    rng = np.random.default_rng(seed)
    pieces = [
        "<answer>", "</answer>", "<reasoning>", "</reasoning>", "\n", " ", "####", "\\boxed{", "\\frac{", "}", "{",
        "^{", "(", ")", "+", "-", "*", "/", "**", "//", ".", ",", "$", "=", "0", "1", "7", "12", "1,200", "99999",
        "\u0661", "\uff11", "\u00b2", "x", "__import__('os')", "nan", "inf", "\x00", "\ud7ff", "1e309",
    ]  # fmt: skip
    out: dict[str, None] = {}  # insertion-ordered set
    while len(out) < n:
        k = int(rng.integers(0, 40))
        out["".join(pieces[i] for i in rng.integers(0, len(pieces), size=k))] = None
    return list(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sudoku", "countdown", "gsm8k", "math500"])
def test_fuzz_rewards_are_finite_bounded_never_raise_and_execute_nothing(name, monkeypatch):
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("a reward called eval or exec")

    task = get_task(name)
    ex = task.load_sample()[0]
    if name == "math500":
        ex = math500.MathExample(problem=ex.problem, answer=ex.answer, grading_timeout_s=0.5)
    top = {"sudoku": 1.0, "countdown": 1.0, "gsm8k": 4.0, "math500": 2.5}[name]
    strings = _fuzz_strings(10_000, seed=sorted(["sudoku", "countdown", "gsm8k", "math500"]).index(name))
    assert len(set(strings)) == 10_000
    task.score([task.target(ex, "d1"), "x"], [ex, ex], "d1")  # imports (which exec module code) happen first
    monkeypatch.setattr(builtins, "eval", forbidden)  # in this process no reward may execute text
    monkeypatch.setattr(builtins, "exec", forbidden)
    for fmt in ("compact", "d1"):
        for text in strings:
            value, acc = task.reward(text, ex, fmt), task.accuracy(text, ex, fmt)
            low = -0.002 * len(text) if name == "gsm8k" else 0.0  # the XML count's trailing-text penalty
            assert isinstance(value, float) and np.isfinite(value) and low <= value <= top, (text, value)
            assert 0.0 <= acc <= 1.0


def test_fuzz_strings_cover_the_hostile_pieces():
    strings = _fuzz_strings(2000, seed=0)
    assert len(strings) == 2000
    assert sum("<answer>" in s for s in strings) > 500 and sum("\u0661" in s for s in strings) > 500
    assert sys.maxunicode > 0xFFFF
