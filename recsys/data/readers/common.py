"""Pieces every reader shares: id remapping, duplicate checks and error locations.

Readers parse whole columns at once (pyarrow / numpy). When a column holds a bad value, they
name the line of the source file it came from; :func:`line_of_row` finds that line by scanning
the file, which happens only on the error path.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import DataError

DUPLICATE_POLICIES = ("error", "drop")
F = TypeVar("F", bound=Callable)

# What the parsing libraries raise on a file they cannot make sense of (bad encoding, a value that
# overflows its type, broken JSON / CSV / Parquet). A reader names the line where it can; anything
# left is reported for the file as a whole by `reports_unreadable_input`.
PARSER_ERRORS = (UnicodeError, pa.ArrowException, OverflowError, json.JSONDecodeError)


def require_file(path: Path, what: str, fix: str) -> Path:
    """Returns ``path`` when it is a non-empty file, else raises :class:`DataError` with ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}; {fix}")
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty; {fix}")
    return path


def line_of_row(path: Path, row: int, header_lines: int = 0, encoding: str = "utf-8") -> int:
    """1-based line of data row ``row`` (0-based) in a text file whose empty lines are skipped.

    Args:
        path: the text file.
        row: index of the data row, counting only non-empty lines after the header.
        header_lines: lines before the first data row.
        encoding: text encoding of the file.
    """
    seen = -1
    with open(path, encoding=encoding, errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if number <= header_lines or not line.strip("\r\n"):
                continue
            seen += 1
            if seen == row:
                return number
    return header_lines + row + 1


def remap_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous ids in the sorted order of the raw ids.

    Args:
        raw: ``[N]`` raw ids (any sortable dtype).

    Returns:
        ``([N] int64 ids in 0..K-1, [K] sorted distinct raw ids)``.
    """
    uniques, ids = np.unique(raw, return_inverse=True)
    return ids.astype(np.int64).reshape(-1), uniques


def first_duplicate(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> tuple[int, int] | None:
    """``(row, row_of_original)`` of the first event repeating an earlier (user, item, time), or None."""
    if len(user) < 2:
        return None
    order = np.lexsort((timestamp, item, user))  # stable: repeats follow their original
    same = (
        (user[order][1:] == user[order][:-1])
        & (item[order][1:] == item[order][:-1])
        & (timestamp[order][1:] == timestamp[order][:-1])
    )
    if not same.any():
        return None
    repeat_rows = order[1:][same]
    row = int(repeat_rows.min())
    where = int(np.flatnonzero(order == row)[0])
    group_start = where
    while group_start > 0 and same[group_start - 1]:
        group_start -= 1
    return row, int(order[group_start])


def keep_first_occurrences(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """``[N]`` bool mask keeping the first event of every (user, item, time) in source order."""
    order = np.lexsort((timestamp, item, user))
    keep = np.ones(len(user), dtype=bool)
    if len(user) > 1:
        same = (
            (user[order][1:] == user[order][:-1])
            & (item[order][1:] == item[order][:-1])
            & (timestamp[order][1:] == timestamp[order][:-1])
        )
        keep[order[1:][same]] = False
    return keep


def handle_duplicates(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, duplicates: str, where
) -> np.ndarray | None:
    """Applies the duplicate policy; returns a keep-mask for "drop" or None when nothing to drop.

    Args:
        user / item / timestamp: ``[N]`` event columns in source order.
        duplicates: "error" (raise on the first repeat) or "drop" (keep first occurrences).
        where: callable ``row -> str`` that names a row in the source (file and line).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(f"duplicates={duplicates!r} is not one of {list(DUPLICATE_POLICIES)}")
    found = first_duplicate(user, item, timestamp)
    if found is None:
        return None
    row, original = found
    if duplicates == "error":
        raise DataError(
            f"duplicate event at {where(row)}: user {user[row]}, item {item[row]}, timestamp {timestamp[row]} "
            f"already appears at {where(original)}; remove it or pass duplicates=\"drop\" to keep the first"
        )
    return keep_first_occurrences(user, item, timestamp)


def to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A pyarrow column as a numpy array (nulls must have been checked before)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False)


def first_null(column: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first null in ``column`` or None."""
    if column.null_count == 0:
        return None
    return int(np.flatnonzero(to_numpy(pc.is_null(column)))[0])


def l2_normalise_rows(x: np.ndarray) -> np.ndarray:
    """``[I, C]`` rows scaled to unit L2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def first_values(parents: np.ndarray, values: np.ndarray, num_rows: int, missing: int) -> np.ndarray:
    """``[num_rows]`` first value per row of a flattened list column, ``missing`` for empty rows.

    Args:
        parents: ``[V]`` row index of each flattened value (non-decreasing).
        values: ``[V]`` flattened values.
        num_rows: number of rows.
        missing: value for rows without any value.
    """
    out = np.full(num_rows, missing, dtype=np.int64)
    if len(parents):
        is_first = np.concatenate([[True], parents[1:] != parents[:-1]])
        out[parents[is_first]] = values[is_first]
    return out


def first_invalid_utf8_line(path: Path) -> int | None:
    """1-based number of the first line of ``path`` that is not valid UTF-8, or None."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def reports_unreadable_input(what: str) -> Callable[[F], F]:
    """Decorator for a reader ``read(path, ...)``: a parser error that no check of the reader named
    more precisely becomes a :class:`DataError` naming the file (never a raw pyarrow/codec error)."""

    def wrap(read: F) -> F:
        @functools.wraps(read)
        def reader(path, *args, **kwargs):
            try:
                return read(path, *args, **kwargs)
            except PARSER_ERRORS as error:
                first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise DataError(f"{path} cannot be read as {what} ({type(error).__name__}: {first_line}); "
                                "check that it is UTF-8 text (or Parquet) in that format") from None

        return reader  # type: ignore[return-value]

    return wrap
