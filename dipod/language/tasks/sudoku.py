"""4x4 Sudoku: d1's CSV format, a unique-solution puzzle generator, and the fraction-of-blanks reward.

A grid is a 16-character string read row by row, digits 1-4, with 0 for a blank. Each row, column and
2x2 box holds 1-4 once. There are exactly 288 valid 4x4 grids, so the generator and the uniqueness
check work against the full list: a puzzle has a unique solution iff exactly one grid agrees with
all of its givens.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from dipod.language.tasks.base import Task
from dipod.language.tasks.prompts import answer_in_tags, d1_completion, d1_prompt

SIZE = 4
CELLS = SIZE * SIZE
UNITS = (
    [[r * SIZE + c for c in range(SIZE)] for r in range(SIZE)]
    + [[r * SIZE + c for r in range(SIZE)] for c in range(SIZE)]
    + [[(br + r) * SIZE + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
)
"""The 12 units (4 rows, 4 columns, 4 boxes) as lists of cell indices."""


@dataclass(frozen=True)
class SudokuExample:
    puzzle: str
    """16 digits, 0 for a blank."""
    solution: str
    """16 digits 1-4."""

    @property
    def blanks(self) -> list[int]:
        return [i for i, ch in enumerate(self.puzzle) if ch == "0"]


def is_valid_grid(grid: str) -> bool:
    """Whether a 16-digit string is a complete valid 4x4 Sudoku."""
    if len(grid) != CELLS or set(grid) - set("1234"):
        return False
    return all(sorted(grid[i] for i in unit) == list("1234") for unit in UNITS)


@functools.cache
def all_grids() -> np.ndarray:
    """(288, 16) int8: every valid 4x4 Sudoku grid, found once by backtracking."""
    grids: list[list[int]] = []
    cell_units = [[u for u in UNITS if i in u] for i in range(CELLS)]

    def fill(grid: list[int], i: int) -> None:
        if i == CELLS:
            grids.append(grid.copy())
            return
        for digit in range(1, SIZE + 1):
            if all(grid[j] != digit for unit in cell_units[i] for j in unit):
                grid[i] = digit
                fill(grid, i + 1)
                grid[i] = 0

    fill([0] * CELLS, 0)
    return np.array(grids, dtype=np.int8)


def _digits(grid: str) -> np.ndarray:
    return np.frombuffer(grid.encode(), dtype=np.uint8).astype(np.int8) - ord("0")


def count_solutions(puzzle: str) -> int:
    """How many valid grids agree with every given (non-zero) cell of ``puzzle``."""
    givens = _digits(puzzle)
    agrees = (all_grids() == givens) | (givens == 0)  # (288, 16)
    return int(agrees.all(-1).sum())


def generate(n: int, rng: np.random.Generator, *, min_blanks: int = 6, max_blanks: int = 10) -> list[SudokuExample]:
    """``n`` puzzles with a unique solution and between ``min_blanks`` and ``max_blanks`` blanks.

    Picks a uniformly random solution grid, then blanks cells in a random order, skipping any cell
    whose removal would admit a second solution, until the drawn number of blanks is reached (or no
    cell can be removed; at most 13 blanks are possible while keeping a unique 4x4 solution).
    """
    if not 1 <= min_blanks <= max_blanks <= CELLS:
        raise ValueError(f"need 1 <= min_blanks <= max_blanks <= 16, got {min_blanks}, {max_blanks}")
    grids = all_grids()
    examples = []
    while len(examples) < n:
        solution = grids[rng.integers(len(grids))]
        want = int(rng.integers(min_blanks, max_blanks + 1))
        puzzle = solution.copy()
        for cell in rng.permutation(CELLS):
            if int((puzzle == 0).sum()) == want:
                break
            keep = puzzle[cell]
            puzzle[cell] = 0
            agrees = ((grids == puzzle) | (puzzle == 0)).all(-1).sum()
            if agrees != 1:
                puzzle[cell] = keep
        if int((puzzle == 0).sum()) >= min_blanks:
            examples.append(SudokuExample("".join(map(str, puzzle)), "".join(map(str, solution))))
    return examples


def parse_row(row: dict, field) -> SudokuExample:
    """A d1 CSV row: ``Puzzle`` and ``Solution`` as 16-digit strings (0 for blanks)."""

    def grid(value: object, *, blanks: bool) -> str:
        text = str(value).strip()
        allowed = set("01234") if blanks else set("1234")
        if len(text) != CELLS or set(text) - allowed:
            raise ValueError(f"expected 16 digits in {''.join(sorted(allowed))}")
        return text

    puzzle = field("Puzzle", lambda v: grid(v, blanks=True))
    solution = field("Solution", lambda v: grid(v, blanks=False))

    def consistent(value: object) -> str:
        if not is_valid_grid(solution):
            raise ValueError("not a valid 4x4 Sudoku solution")
        if any(p != "0" and p != s for p, s in zip(puzzle, solution, strict=True)):
            raise ValueError("disagrees with a given digit of Puzzle")
        return solution

    field("Solution", consistent)
    return SudokuExample(puzzle, solution)


def show_grid(grid: str) -> str:
    """Four lines of four digits (how the d1-style prompt shows the puzzle)."""
    return "\n".join(grid[r * SIZE : (r + 1) * SIZE] for r in range(SIZE))


def prompt(ex: SudokuExample, fmt: str) -> str:
    """Compact: the 16 puzzle digits. d1: the rules, the grid, and the answer format."""
    if fmt == "compact":
        return ex.puzzle
    question = (
        "Solve this 4x4 Sudoku. Each row, each column and each 2x2 box must contain the digits 1-4 exactly "
        "once; 0 marks an empty cell. Give the completed grid as 16 digits, row by row, in the answer.\n\n"
        f"Puzzle:\n{show_grid(ex.puzzle)}"
    )
    return d1_prompt(question)


def target(ex: SudokuExample, fmt: str) -> str:
    """Compact: the 16 solution digits. d1: a short reasoning line and the solution."""
    if fmt == "compact":
        return ex.solution
    return d1_completion(f"Fill the {len(ex.blanks)} empty cells so every unit holds 1-4 once.", ex.solution)


def answer_digits(text: str, fmt: str) -> str:
    """The first 16 digits the completion gives as its grid (compact: the whole text; d1: inside the last
    answer-tag pair), as the release's ``extract_answer_sudoku`` reads them.

    Every character that ``str.isdigit`` accepts counts, as released, so a non-ASCII digit takes a cell
    (and is wrong there). There is no cap on the answer's length: reading its digits is linear in it.
    """
    answer = text if fmt == "compact" else answer_in_tags(text)
    if answer is None:
        return ""
    return "".join(itertools.islice(filter(str.isdigit, answer), CELLS))


def reward(text: str, ex: SudokuExample, fmt: str) -> float:
    """Fraction of the puzzle's blank cells filled with the right digit; missing digits count as wrong.

    A puzzle with no blanks scores 0, as in the release's ``validate_sudoku_solution``: there is nothing
    to solve, so nothing earns reward (the generator never makes one; a data file may hold one).
    """
    digits = answer_digits(text, fmt)
    blanks = ex.blanks
    if not blanks:
        return 0.0
    right = sum(1 for i in blanks if i < len(digits) and digits[i] == ex.solution[i])
    return right / len(blanks)


def accuracy(text: str, ex: SudokuExample, fmt: str) -> float:
    """The evaluation metric of the release: the fraction of blanks filled correctly (as the reward)."""
    return reward(text, ex, fmt)


TASK = Task(
    name="sudoku",
    parse_row=parse_row,
    prompt=prompt,
    target=target,
    reward=reward,
    accuracy=accuracy,
    generate=generate,
    generate_options=lambda data: {"min_blanks": data.sudoku_min_blanks, "max_blanks": data.sudoku_max_blanks},
    sample_file="sudoku_4x4.csv",
)
