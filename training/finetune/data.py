"""Labelled examples for `bert-finetune`: CSV, TSV or JSONL rows -> texts and targets.

The format follows the extension (.csv, .tsv/.tab, .jsonl/.ndjson) unless --delimiter is given.
TSV is read without quoting (the STS-B files hold bare `"` in their sentences). Columns are
named, or given by 0-based index (the only way without a header row). Every problem is a
TaskDataError naming the file and the line, raised before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASSIFICATION = "classification"
REGRESSION = "regression"
DELIMITERS = {"tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


class TaskDataError(ValueError):
    """A training or evaluation file that cannot be used as given."""


@dataclass(frozen=True)
class Columns:
    text_a: str  # a column name, or a 0-based index written as digits
    text_b: str | None  # None: single-text task
    label: str


@dataclass
class Examples:
    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[str]  # raw label cells; mapped to ids or floats by the caller
    lines: list[int]  # the line each example came from, for error messages

    def __len__(self) -> int:
        return len(self.texts_a)

    def subset(self, rows: np.ndarray) -> Examples:
        pick = [int(r) for r in rows]
        return Examples(
            [self.texts_a[r] for r in pick],
            None if self.texts_b is None else [self.texts_b[r] for r in pick],
            [self.labels[r] for r in pick],
            [self.lines[r] for r in pick],
        )

    def inputs(self) -> list[str | tuple[str, str]]:
        if self.texts_b is None:
            return list(self.texts_a)
        return list(zip(self.texts_a, self.texts_b, strict=True))


def _format(path: Path, delimiter: str | None) -> str:
    """'jsonl' or the delimiter character."""
    if delimiter is not None:
        return DELIMITERS.get(delimiter, delimiter)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    raise TaskDataError(
        f"{path}: cannot tell the format from the extension {suffix or '(none)'}; "
        "use .csv, .tsv or .jsonl, or give --delimiter"
    )


def _rows(path: Path, fmt: str, header: bool) -> tuple[list[str] | None, Iterator[tuple[int, Any]]]:
    """(header names or None, iterator of (line number, list of cells or dict))."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TaskDataError(f"{path} does not exist") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise TaskDataError(f"{path}: line {line} is not valid UTF-8") from None
    except OSError as exc:
        raise TaskDataError(f"{path} is unreadable ({exc.strerror})") from None
    if fmt == "jsonl":

        def json_rows() -> Iterator[tuple[int, Any]]:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TaskDataError(f"{path}: line {number} is not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise TaskDataError(f"{path}: line {number} is not a JSON object")
                yield number, row

        return None, json_rows()
    quoting = csv.QUOTE_NONE if fmt == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt, quoting=quoting, strict=True)

    def csv_rows() -> Iterator[tuple[int, Any]]:
        try:
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    yield reader.line_num, row
        except csv.Error as exc:
            raise TaskDataError(f"{path}: line {reader.line_num} is unreadable ({exc})") from None

    rows = csv_rows()
    if not header:
        return None, rows
    first = next(rows, None)
    if first is None:
        raise TaskDataError(f"{path} is empty")
    return [cell.strip() for cell in first[1]], rows


def _cell(path: Path, number: int, row: Any, column: str, names: list[str] | None) -> str:
    if isinstance(row, dict):
        if column not in row:
            raise TaskDataError(f"{path}: line {number} has no field {column!r}")
        value = row[column]
        return value if isinstance(value, str) else json.dumps(value)
    index = _index(path, column, names)
    if index >= len(row):
        raise TaskDataError(
            f"{path}: line {number} has {len(row)} columns, column {column!r} is number {index + 1}"
        )
    return str(row[index])


def _index(path: Path, column: str, names: list[str] | None) -> int:
    if names is not None and column in names:
        return names.index(column)
    if column.isdigit():
        return int(column)
    if names is None:
        raise TaskDataError(
            f"{path}: column {column!r} must be a 0-based index when the file has no header"
        )
    raise TaskDataError(f"{path}: no column {column!r} (the header has {', '.join(names)})")


def read_columns(
    path: Path, columns: list[str], delimiter: str | None = None, header: bool = True
) -> tuple[list[list[str]], list[int]]:
    """The cells of `columns` (names or 0-based indexes), one list per column, and the line
    each row came from. A missing column is named before any row is read."""
    fmt = _format(path, delimiter)
    names, rows = _rows(path, fmt, header and fmt != "jsonl")
    if names is not None:
        for column in columns:
            _index(path, column, names)
    cells: list[list[str]] = [[] for _ in columns]
    lines: list[int] = []
    for number, row in rows:
        for values, column in zip(cells, columns, strict=True):
            values.append(_cell(path, number, row, column, names))
        lines.append(number)
    if not lines:
        raise TaskDataError(f"{path} has no examples")
    return cells, lines


def read_examples(
    path: Path, columns: Columns, delimiter: str | None = None, header: bool = True
) -> Examples:
    wanted = [c for c in (columns.text_a, columns.text_b, columns.label) if c is not None]
    cells, lines = read_columns(path, wanted, delimiter, header)
    texts_b = cells[1] if columns.text_b is not None else None
    return Examples(cells[0], texts_b, [label.strip() for label in cells[-1]], lines)


def label_names(train: Examples, given: list[str] | None, path: Path) -> list[str]:
    """The classes in a stable order: as given (--labels), else sorted."""
    seen = sorted(set(train.labels))
    if given is not None:
        unknown = sorted(set(seen) - set(given))
        if unknown:
            raise TaskDataError(f"{path}: labels {unknown[:5]} are not in --labels")
        names = list(given)
    else:
        names = seen
    if len(seen) < 2:
        raise TaskDataError(
            f"{path}: every example has the label {seen[0]!r}; a classifier needs two or more"
        )
    return names


def class_ids(examples: Examples, names: list[str], path: Path) -> np.ndarray:
    """(N,) int64 label ids; a label unseen in training is an error naming its line."""
    index = {name: i for i, name in enumerate(names)}
    ids = np.empty(len(examples), dtype=np.int64)
    for row, (label, line) in enumerate(zip(examples.labels, examples.lines, strict=True)):
        if label not in index:
            raise TaskDataError(
                f"{path}: line {line} has the label {label!r}, which the training data does "
                f"not have ({', '.join(names)})"
            )
        ids[row] = index[label]
    return ids


def float_targets(examples: Examples, path: Path) -> np.ndarray:
    """(N,) float32 regression targets; a cell that is not a finite number names its line."""
    return numbers(examples.labels, examples.lines, path, "target")


def numbers(cells: list[str], lines: list[int], path: Path, what: str = "score") -> np.ndarray:
    """(N,) float32 of `cells`; a cell that is not a finite number names its line."""
    values = np.empty(len(cells), dtype=np.float32)
    for row, (cell, line) in enumerate(zip(cells, lines, strict=True)):
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise TaskDataError(
                f"{path}: line {line} has the {what} {cell.strip()!r}, not a number"
            )
        values[row] = value
    return values


def hold_out(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows): a seeded random `fraction` of the rows held out."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(count * fraction))
    if held >= count:
        raise TaskDataError(f"cannot hold out {fraction:.0%} of {count} examples for evaluation")
    return np.sort(order[held:]), np.sort(order[:held])
