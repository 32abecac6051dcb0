"""Reading task data from local files in their public formats, with errors that name file, line and field.

Rows are plain dicts (JSONL objects, CSV rows with a header, parquet rows). Each task turns a row into
its example type with ``field``-checking helpers, so a bad file fails with ``DataError`` saying where:
``data.jsonl, line 3, field 'target': expected an integer, got 'abc'``. Parquet rows are numbered
from 1 like lines.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

Row = dict[str, Any]
T = TypeVar("T")


class DataError(ValueError):
    """A task data file that cannot be used; the message names the file, the line (or row) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field = str(path), line, field


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Row]]:
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, number, None, f"not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, number, None, f"expected a JSON object, got {type(row).__name__}")
            yield number, row


def _json_rows(path: Path) -> Iterator[tuple[int, Row]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, None, f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(path, None, None, "expected a JSON list of objects")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(path, number, None, f"expected a JSON object, got {type(row).__name__}")
        yield number, row


def _csv_rows(path: Path) -> Iterator[tuple[int, Row]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise DataError(path, 1, None, "empty CSV file, expected a header row")
        for row in reader:
            yield reader.line_num, dict(row)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Row]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is an optional extra
        raise DataError(path, None, None, "reading parquet needs pyarrow (pip install 'dipod[data]')") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several error types for broken files
        raise DataError(path, None, None, f"not a readable parquet file ({exc})") from None
    yield from enumerate(table.to_pylist(), start=1)


READERS: dict[str, Callable[[Path], Iterator[tuple[int, Row]]]] = {
    ".jsonl": _jsonl_rows,
    ".json": _json_rows,
    ".csv": _csv_rows,
    ".parquet": _parquet_rows,
}


def read_rows(path: str | Path) -> Iterator[tuple[int, Row]]:
    """(line or row number, row dict) for each record of a .jsonl, .json, .csv or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(path, None, None, f"unknown data format {path.suffix!r}; expected one of {sorted(READERS)}")
    return reader(path)


def load_examples(path: str | Path, parse_row: Callable[[Row, Callable[..., Any]], T]) -> list[T]:
    """Parse every row of ``path`` into an example; ``parse_row(row, field)`` reads fields through ``field``.

    ``field(name, convert)`` returns ``convert(row[name])`` and turns a missing key or a conversion error
    (``ValueError``/``TypeError``) into a ``DataError`` naming the file, the line and the field.
    """
    examples = []
    for number, row in read_rows(path):

        def field(name: str, convert: Callable[[Any], Any] = lambda v: v, _row: Row = row, _n: int = number) -> Any:
            if name not in _row or _row[name] is None:
                raise DataError(path, _n, name, f"missing (row has {sorted(_row)})")
            try:
                return convert(_row[name])
            except (ValueError, TypeError) as exc:
                raise DataError(path, _n, name, f"{exc} (value {_row[name]!r})") from None

        examples.append(parse_row(row, field))
    if not examples:
        raise DataError(path, None, None, "no examples in file")
    return examples


def as_int(value: Any) -> int:
    """An integer from an int, an integral float or a decimal string; bools and fractions are errors."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    raise ValueError(f"expected an integer, got {type(value).__name__}")


def as_int_list(value: Any) -> tuple[int, ...]:
    """A non-empty tuple of integers from a list (JSON/parquet) or a JSON list string (CSV)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("expected a list of integers") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("expected a non-empty list of integers")
    return tuple(as_int(v) for v in value)


def as_text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("expected a non-empty string")
    return value
