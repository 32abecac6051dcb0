"""Tasks: data files in their public formats, generators, and rewards on known and malformed answers."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from dipod.language.tasks import TASKS, DataError, countdown, get_task, gsm8k, math500, sorting, sudoku
from dipod.language.tasks.arith import evaluate
from dipod.language.tasks.prompts import d1_completion
from dipod.language.tasks.rewards import parse_number, soft_format_reward, strict_format_reward, xml_count_reward

GARBAGE = [
    "",
    " ",
    "<answer>",
    "</answer><answer>",
    "<answer>\n\n</answer>",
    "<answer>__import__('os').system('echo hi')</answer>",
    "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>",
    "<answer>" + "9" * 400 + "</answer>",
    "<answer>99999*99999*99999*99999*99999</answer>",
    "<answer>1/0</answer>",
    "<answer>\\boxed{\\frac{</answer>",
    "\x00\xff\ud7ff" * 10,
    "<reasoning>" * 100,
    "nan",
    "inf",
]


# --------------------------------------------------------------------------- shipped samples


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shipped_samples_load_and_their_targets_score_full(name):
    task = get_task(name)
    examples = task.load_sample()
    assert len(examples) >= 4
    for fmt in ("compact", "d1"):
        completions = [task.target(ex, fmt) for ex in examples]
        rewards, accuracy = task.score(completions, examples, fmt)
        assert accuracy.tolist() == [1.0] * len(examples), (name, fmt, completions)
        assert (rewards > 0).all()


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("fmt", ["compact", "d1"])
def test_rewards_never_raise_and_score_garbage_zero(name, fmt):
    task = get_task(name)
    ex = task.load_sample()[0]
    for text in GARBAGE:
        value = task.reward(text, ex, fmt)
        assert isinstance(value, float) and np.isfinite(value)
        assert task.accuracy(text, ex, fmt) == 0.0, (name, fmt, text[:40])


def test_unknown_task_lists_choices():
    with pytest.raises(ValueError, match="countdown, gsm8k, math500, sort, sudoku"):
        get_task("chess")


# --------------------------------------------------------------------------- sudoku


def test_sudoku_has_288_grids_and_all_valid():
    grids = sudoku.all_grids()
    assert grids.shape == (288, 16)
    assert all(sudoku.is_valid_grid("".join(map(str, g))) for g in grids)
    assert not sudoku.is_valid_grid("1234123412341234")


def test_sudoku_generator_unique_solutions_and_blank_counts():
    rng = np.random.default_rng(0)
    examples = sudoku.generate(40, rng, min_blanks=6, max_blanks=10)
    for ex in examples:
        assert sudoku.count_solutions(ex.puzzle) == 1
        assert 6 <= len(ex.blanks) <= 10
        assert sudoku.is_valid_grid(ex.solution)
        assert all(p in ("0", s) for p, s in zip(ex.puzzle, ex.solution, strict=True))
    # the generator follows the passed generator: same seed, same puzzles; another seed, others
    assert sudoku.generate(5, np.random.default_rng(1)) == sudoku.generate(5, np.random.default_rng(1))
    assert sudoku.generate(5, np.random.default_rng(1)) != sudoku.generate(5, np.random.default_rng(2))


def test_sudoku_count_solutions_detects_ambiguity():
    solution = "".join(map(str, sudoku.all_grids()[0]))
    assert sudoku.count_solutions(solution) == 1
    assert sudoku.count_solutions("0" * 16) == 288


def test_sudoku_reward_is_fraction_of_blanks():
    ex = sudoku.SudokuExample(puzzle="0234341221434300", solution="1234341221434321")  # blanks 0, 14, 15
    assert sudoku.reward("1234341221434321", ex, "compact") == 1.0
    assert sudoku.reward("1234341221434312", ex, "compact") == pytest.approx(1 / 3)  # only cell 0 right
    assert sudoku.reward("12343412", ex, "compact") == pytest.approx(1 / 3)  # missing digits are wrong
    d1_text = "<reasoning>\nx\n</reasoning>\n<answer>\n1234\n3412\n2143\n4321\n</answer>\n"
    assert sudoku.reward(d1_text, ex, "d1") == 1.0
    assert sudoku.reward("1234341221434321", ex, "d1") == 0.0  # d1 needs the answer tags


# --------------------------------------------------------------------------- countdown


def test_arith_parser_values_and_rejections():
    assert evaluate("(1 + 2) / 3").value == 1
    assert evaluate("2+3*4").value == 14  # precedence
    assert evaluate("8/3*3").value == 8  # exact rationals
    assert evaluate("10-2-3").value == 5  # left associative
    assert evaluate("(3+5)*7").numbers == (3, 5, 7)
    for bad in [
        "",
        "1+",
        "-1+2",
        "2**3",
        "1/0",
        "(1+2",
        "1+2)",
        "abs(3)",
        "1 2",
        "1.5+1",
        "x",
        "(" * 40 + "1" + ")" * 40,
    ]:
        assert evaluate(bad) is None, bad


def test_countdown_reward_cases():
    ex = countdown.CountdownExample(nums=(3, 5, 7), target=22)
    assert countdown.reward("3*5+7", ex, "compact") == 1.0
    assert countdown.reward("7+5*3", ex, "compact") == 1.0
    assert countdown.reward("3*5+7=22", ex, "compact") == 1.0
    assert countdown.reward("3*5+6", ex, "compact") == 0.1  # wrong numbers, well formed
    assert countdown.reward("3*5+7+3", ex, "compact") == 0.1  # a number used twice
    assert countdown.reward("3+5+7", ex, "compact") == 0.1  # wrong value
    assert countdown.reward("3*5+", ex, "compact") == 0.0  # malformed
    assert countdown.reward(d1_completion("r", "3 * 5 + 7"), ex, "d1") == 1.0
    assert countdown.reward(d1_completion("r", "3 + 5"), ex, "d1") == 0.1
    assert countdown.reward("3*5+7", ex, "d1") == 0.0  # no answer tags
    assert countdown.reward("<answer>3*5+7</answer> and <answer>", ex, "d1") == 1.0  # the last complete pair


@pytest.mark.parametrize(
    "answer",
    ["three times five plus seven", "3*5+", "2**3", "", "3*5+7=22", "__import__('os').system('echo hi')", "1/0"],
)
def test_countdown_answer_tags_earn_the_format_score_even_when_unparsable(answer):
    # d1's compute_score: any extracted answer that is not a correct equation scores format_score = 0.1.
    ex = countdown.CountdownExample(nums=(3, 5, 7), target=22)
    assert countdown.reward(d1_completion("r", answer), ex, "d1") == 0.1
    assert countdown.reward(f"<answer>{answer}</answer>", ex, "d1") == 0.1
    assert countdown.reward(f"<reasoning>{answer}</reasoning>", ex, "d1") == 0.0  # no answer tags
    assert countdown.accuracy(d1_completion("r", answer), ex, "d1") == 0.0


def test_countdown_generator_and_solver():
    rng = np.random.default_rng(3)
    for ex in countdown.generate(30, rng, num_numbers=4, max_number=20, max_target=100):
        assert len(ex.nums) == 4 and 1 <= ex.target <= 100
        assert countdown.reward(ex.solution, ex, "compact") == 1.0
        found = countdown.solve(ex.nums, ex.target)
        assert found is not None and countdown.reward(found, ex, "compact") == 1.0
    assert countdown.solve((1, 1), 7) is None


def test_countdown_parquet_matches_jsonl():
    from dipod.language.tasks.base import sample_path

    task = get_task("countdown")
    assert task.load(sample_path("countdown.parquet")) == task.load(sample_path("countdown.jsonl"))


# --------------------------------------------------------------------------- sorting


def test_sorting_reward_is_the_fraction_of_positions_right():
    ex = sorting.SortExample((42, 7, 15, 99))
    assert sorting.prompt(ex, "compact") == "42,07,15,99"
    assert sorting.target(ex, "compact") == "07,15,42,99"
    assert sorting.reward("07,15,42,99", ex, "compact") == 1.0
    assert sorting.reward("07,15,99,42", ex, "compact") == 0.5  # two positions right
    assert sorting.reward("7,15,42,99", ex, "compact") == 0.75  # one digit where two are required
    assert sorting.reward("07,15", ex, "compact") == 0.5  # missing fields are wrong
    assert sorting.reward("07,15,42,99,00,11", ex, "compact") == 1.0  # extra fields are not read
    assert sorting.reward("<answer>07, 15, 42, 99</answer>", ex, "d1") == 1.0
    assert sorting.reward("07,15,42,99", ex, "d1") == 0.0  # d1 needs the answer tags
    assert sorting.accuracy("07,15,99,42", ex, "compact") == 0.5


def test_sorting_generator_gives_completions_of_three_characters_a_number():
    rng = np.random.default_rng(0)
    examples = sorting.generate(50, rng, count=12)
    assert all(len(ex.nums) == 12 and all(0 <= v <= 99 for v in ex.nums) for ex in examples)
    assert {len(sorting.target(ex, "compact")) for ex in examples} == {35}
    with pytest.raises(ValueError, match="count"):
        sorting.generate(1, rng, count=1)


# --------------------------------------------------------------------------- gsm8k / math


def test_gsm8k_rewards_components():
    ex = gsm8k.GSM8KExample(question="q", answer="1200", grading="numeric")
    strict = "<reasoning>\nwork\n</reasoning>\n<answer>\n1200\n</answer>\n"
    # correctness 2 + integer 0.5 + strict 0.5 + xml 4 * 0.125; soft needs each block on one line (release)
    assert gsm8k.reward(strict, ex, "d1") == pytest.approx(3.5)
    assert gsm8k.reward(strict.replace("1200", "1,200"), ex, "d1") == pytest.approx(3.0)  # no integer credit
    assert gsm8k.reward(strict.replace("1200", "7"), ex, "d1") == pytest.approx(1.5)
    soft = "<reasoning>work</reasoning> <answer>1200</answer>"
    assert gsm8k.reward(soft, ex, "d1") == pytest.approx(2.0 + 0.5 + 0.5)  # no strict, no xml lines
    assert gsm8k.reward("1200", ex, "compact") == 2.0
    assert gsm8k.reward("$1,200.00", ex, "compact") == 2.0
    assert gsm8k.reward("1201", ex, "compact") == 0.0
    # the release's exact string match: the comma costs the correctness reward
    exact = gsm8k.GSM8KExample(question="q", answer="1200")
    assert exact.grading == "exact"
    assert gsm8k.reward(strict, exact, "d1") == pytest.approx(3.5)
    assert gsm8k.reward(strict.replace("1200", "1,200"), exact, "d1") == pytest.approx(1.0)  # strict + xml only


def test_format_rewards_match_the_release_regexes_without_dotall():
    # d1's reward_func.py: re.match(pattern, text) with no flags, so '.' does not cross newlines.
    multi = "<reasoning>\nstep 1\nstep 2\n</reasoning>\n<answer>\n42\n</answer>\n"
    single = "<reasoning>\nstep 1\n</reasoning>\n<answer>\n42\n</answer>\n"
    one_line = "<reasoning>step 1</reasoning>\n<answer>42</answer>"
    assert strict_format_reward(multi) == 0.0  # multi-line reasoning: the release's strict format misses it
    assert strict_format_reward(single) == 0.5
    assert strict_format_reward(single.rstrip("\n")) == 0.0  # the release requires the final newline
    assert strict_format_reward("text before\n" + single) == 0.0
    assert soft_format_reward(multi) == 0.0
    assert soft_format_reward(single) == 0.0  # tags on their own lines: '.' stops at the newline
    assert soft_format_reward(one_line) == 0.5  # \s* between the blocks may hold newlines
    assert soft_format_reward("x " + one_line) == 0.0  # re.match: anchored at the start
    assert soft_format_reward(one_line + "\ntrailing text") == 0.5
    # dotall=True: the later d1 fix, '.' crosses newlines (still re.match)
    assert strict_format_reward(multi, dotall=True) == 0.5
    assert soft_format_reward(multi, dotall=True) == 0.5
    assert soft_format_reward("x " + multi, dotall=True) == 0.0
    ex = gsm8k.GSM8KExample(question="q", answer="42")
    # correctness 2 + integer 0.5 + xml 0.5; strict 0.5 for the single-line reasoning only
    assert gsm8k.reward(multi, ex, "d1") == pytest.approx(3.0)
    assert gsm8k.reward(single, ex, "d1") == pytest.approx(3.5)


def test_xml_count_trailing_penalty():
    base = "<reasoning>\nx\n</reasoning>\n<answer>\n5\n</answer>\n"
    assert xml_count_reward(base) == pytest.approx(0.5)
    assert xml_count_reward(base + "abc") == pytest.approx(0.5 - 0.003 - 0.003)


def test_parse_number():
    assert parse_number("1,234") == 1234
    assert parse_number("-3.50") == pytest.approx(-3.5)
    assert parse_number("7.") == 7
    assert parse_number("3 apples") is None
    assert parse_number("1" * 100) is None


def test_math_equivalence_and_boxed_bonus():
    ex = math500.MathExample(problem="p", answer="\\frac{5}{6}")
    assert math500.reward(d1_completion("r", "\\boxed{\\frac{10}{12}}"), ex, "d1") == 2.5
    assert math500.reward(d1_completion("r", "\\frac{5}{6}"), ex, "d1") == 2.0
    assert math500.reward(d1_completion("r", "\\boxed{\\frac{1}{6}}"), ex, "d1") == 0.5
    assert math500.reward("\\boxed{5/6}", ex, "d1") == 0.0  # no answer tags
    assert math500.reward("\\frac{5}{6}", ex, "compact") == 2.0
    assert math500.accuracy(d1_completion("r", "\\boxed{0.8\\overline{3}}"), ex, "d1") in (0.0, 1.0)


def test_math_grading_works_outside_the_main_thread():
    # math-verify's signal-based time limit raises in a thread; grading there must still work.
    ex = math500.MathExample(problem="p", answer="\\frac{5}{6}")
    text = d1_completion("r", "\\boxed{\\frac{10}{12}}")
    results: dict[str, float] = {}

    def grade() -> None:
        results["reward"] = math500.reward(text, ex, "d1")
        results["accuracy"] = math500.accuracy(text, ex, "d1")
        results["wrong"] = math500.accuracy(d1_completion("r", "\\boxed{\\frac{1}{6}}"), ex, "d1")

    thread = threading.Thread(target=grade)
    thread.start()
    thread.join()
    assert results == {"reward": 2.5, "accuracy": 1.0, "wrong": 0.0}


# --------------------------------------------------------------------------- data file errors


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("name", "filename", "lines", "line", "field"),
    [
        (
            "sudoku",
            "s.csv",
            ["Puzzle,Solution", "0234341221434300,1234341221434321", "02343412214343,1234341221434321"],
            3,
            "Puzzle",
        ),
        ("sudoku", "s.csv", ["Puzzle,Solution", "0234341221434300,1234341221434312"], 2, "Solution"),
        ("sudoku", "s.csv", ["Puzzle,Answer", "0234341221434300,1234341221434321"], 2, "Solution"),
        ("countdown", "c.jsonl", ['{"nums": [1, 2], "target": 3}', '{"nums": [1, 2], "target": "x"}'], 2, "target"),
        ("countdown", "c.jsonl", ['{"nums": "12", "target": 3}'], 1, "nums"),
        ("countdown", "c.jsonl", ['{"nums": [1, 2], "target": 3}', "", '{"nums": [1, 2.5], "target": 3}'], 3, "nums"),
        ("gsm8k", "g.jsonl", [json.dumps({"question": "q", "answer": "no marker"})], 1, "answer"),
        (
            "gsm8k",
            "g.jsonl",
            [json.dumps({"question": "q", "answer": "x #### 3"}), json.dumps({"answer": "#### 3"})],
            2,
            "question",
        ),
        ("math500", "m.jsonl", [json.dumps({"problem": "p", "answer": ""})], 1, "answer"),
        ("sort", "s.jsonl", ['{"nums": [1, 2]}', '{"nums": [1, 200]}'], 2, "nums"),
    ],
)
def test_bad_data_file_names_file_line_field(tmp_path, name, filename, lines, line, field):
    path = _write(tmp_path / filename, lines)
    with pytest.raises(DataError) as info:
        get_task(name).load(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message and repr(field) in message, message
    assert (info.value.line, info.value.field) == (line, field)


def test_bad_json_line_and_missing_file(tmp_path):
    path = _write(tmp_path / "c.jsonl", ['{"nums": [1, 2], "target": 3}', "{not json"])
    with pytest.raises(DataError, match=r"c.jsonl, line 2: not valid JSON"):
        get_task("countdown").load(path)
    with pytest.raises(DataError, match="does not exist"):
        get_task("countdown").load(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown data format"):
        get_task("countdown").load(_write(tmp_path / "c.txt", ["x"]))


def test_bad_parquet_row_names_row_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"nums": [1, 2], "target": 3}, {"nums": [1, 2], "target": None}]), path)
    with pytest.raises(DataError, match=r"c.parquet, line 2, field 'target'"):
        get_task("countdown").load(path)
