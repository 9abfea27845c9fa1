"""A generic event log in CSV or Parquet, mapped onto the :class:`EventLog` schema by column name.

One row per event. A :class:`ColumnMapping` names the source column of each field:

- ``user`` / ``item``: integer ids (remapped to contiguous ids; raw ids kept).
- ``timestamp``: seconds (``timestamp_unit="s"``), milliseconds (``"ms"``) or ISO 8601 strings
  (``"iso8601"``; without a zone offset they are taken as UTC).
- ``actions``: action names joined by ``|`` (``"click|save"``); empty = no action, i.e. an
  impression without engagement. None: every event is one action "interact".
- ``surface`` (names), ``impression`` (true/false or 1/0), ``rating`` (float), ``request``
  (integer request id): optional; None gives surface "home", impression True, no rating, no
  request ids.

Example file::

    user_id,item_id,timestamp,actions
    7,101,1700000000,click|save
    7,205,1700000060,
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.data.readers.common import (
    first_null, handle_duplicates, line_of_row, remap_ids, reports_unreadable_input, require_file, to_numpy,
)
from recsys.data.schema import EventLog
from recsys.errors import ConfigError, DataError

TIMESTAMP_UNITS = ("s", "ms", "iso8601")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".gz", ".bz2")
_INTEGER = r"^\s*-?\d+\s*$"
_INT64_MAX = int(np.iinfo(np.int64).max)

Where = Callable[[int], str]  # row -> "file line L" / "file row R"


@dataclass(frozen=True)
class ColumnMapping:
    """Source column name of each :class:`EventLog` field (None: the field is absent)."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    actions: str | None = "actions"
    surface: str | None = None
    impression: str | None = None
    rating: str | None = None
    request: str | None = None


@reports_unreadable_input("an event table (CSV or Parquet)")
def read_event_table(
    path: str | Path,
    columns: ColumnMapping | dict = ColumnMapping(),
    action_vocab: Sequence[str] | None = None,
    timestamp_unit: str = "s",
    duplicates: str = "error",
) -> EventLog:
    """Reads a CSV or Parquet event table into a validated, (user, time)-sorted :class:`EventLog`.

    Args:
        path: a ``.csv`` (optionally ``.gz``/``.bz2``) or ``.parquet`` file with a header.
        columns: which source column holds each field (a dict of ColumnMapping fields works too,
            as from a config file or the command line).
        action_vocab: action names in bit order; None infers them (sorted) from the data.
            Names outside a given vocabulary are an error.
        timestamp_unit: "s", "ms" or "iso8601".
        duplicates: "error" on a repeated (user, item, timestamp), or "drop" to keep the first.
    """
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise ConfigError(f"timestamp_unit={timestamp_unit!r} is not one of {list(TIMESTAMP_UNITS)}")
    columns = _mapping(columns)
    path = require_file(Path(path), "event table", "pass a CSV or Parquet file with one row per event")
    table, where = _read_table(path, columns)
    if table.num_rows == 0:
        raise DataError(f"{path} holds no events; pass a file with at least one row")
    raw_user = _integers(table, columns.user, where)
    raw_item = _integers(table, columns.item, where)
    timestamp = _timestamps(table, columns.timestamp, timestamp_unit, where)
    keep = handle_duplicates(raw_user, raw_item, timestamp, duplicates, where)
    if keep is not None:
        table = table.filter(pa.array(keep))
        raw_user, raw_item, timestamp = raw_user[keep], raw_item[keep], timestamp[keep]
        where = _kept_rows(where, np.flatnonzero(keep))
    actions, vocab = _actions(table, columns.actions, action_vocab, where)
    surface, surfaces = _surfaces(table, columns.surface, where)
    user_id, raw_users = remap_ids(raw_user)
    item_id, raw_items = remap_ids(raw_item)
    return EventLog.from_arrays(
        user_id=user_id,
        item_id=item_id,
        timestamp=timestamp,
        actions=actions,
        surface=surface,
        impression=_impressions(table, columns.impression, where),
        num_users=len(raw_users),
        num_items=len(raw_items),
        action_vocab=vocab,
        surface_vocab=surfaces,
        raw_user_ids=raw_users,
        raw_item_ids=raw_items,
        rating=_ratings(table, columns.rating, where),
        request_id=None if columns.request is None else _integers(table, columns.request, where),
    )


# ------------------------------------------------------------------ reading
def _mapping(columns: ColumnMapping | dict) -> ColumnMapping:
    if isinstance(columns, ColumnMapping):
        return columns
    known = [f.name for f in fields(ColumnMapping)]
    unknown = sorted(set(columns) - set(known)) if isinstance(columns, dict) else None
    if unknown is None or unknown:
        raise ConfigError(f"columns must map the fields {known} to column names; got {columns!r}")
    return ColumnMapping(**columns)


def _read_table(path: Path, columns: ColumnMapping) -> tuple[pa.Table, Where]:
    """The table with the mapped columns, and a function naming a row's place in the file."""
    wanted = [getattr(columns, f.name) for f in fields(columns) if getattr(columns, f.name) is not None]
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            table = pq.read_table(path)
            where = lambda row: f"{path} row {row}"  # noqa: E731
        elif suffix in CSV_SUFFIXES:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in wanted}, strings_can_be_null=True
                ),
            )
            where = lambda row: f"{path} line {line_of_row(path, row, header_lines=1)}"  # noqa: E731
        else:
            raise DataError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path} could not be read: {exc}; "
                        f"check the file is a complete CSV (with a header) or Parquet file") from None
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; found {table.column_names}; "
                        f"rename them or pass columns=ColumnMapping(...) naming the right ones")
    return table, where


def _kept_rows(where: Where, kept: np.ndarray) -> Where:
    return lambda row: where(int(kept[row]))


def _not_null(table: pa.Table, name: str, where: Where) -> pa.Array:
    column = table[name].combine_chunks()
    row = first_null(column)
    if row is not None:
        raise DataError(f"{where(row)}: column {name!r} is empty; fill it in or drop the event")
    return column


def _integers(table: pa.Table, name: str, where: Where) -> np.ndarray:
    """``[N]`` int64 values of an integer column (integer, integral float or digit strings)."""
    column = _not_null(table, name, where)
    if pa.types.is_integer(column.type):
        values = to_numpy(column)
        if values.dtype == np.uint64 and len(values) and values.max() > _INT64_MAX:
            row = int(np.argmax(values > _INT64_MAX))
            raise _too_large(name, str(values[row]), where(row))
        return values.astype(np.int64)
    if pa.types.is_floating(column.type):
        values = to_numpy(column)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise DataError(f"{where(int(bad[0]))}: column {name!r} holds {values[bad[0]]}, not an integer; "
                            f"fix the value")
        huge = np.flatnonzero(np.abs(values) >= 2.0**63)
        if len(huge):
            raise _too_large(name, str(values[huge[0]]), where(int(huge[0])))
        return values.astype(np.int64)
    text = pc.cast(column, pa.string())
    ok = to_numpy(pc.match_substring_regex(text, _INTEGER)).astype(bool)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{where(row)}: column {name!r} holds {text[row].as_py()!r}, not an integer; "
                        f"fix the value (ids, timestamps and request ids are integers)")
    trimmed = pc.utf8_trim_whitespace(text)
    try:
        return to_numpy(pc.cast(trimmed, pa.int64())).astype(np.int64)
    except pa.ArrowInvalid:  # digits, but more than int64 holds
        row = next(r for r in range(len(trimmed)) if abs(int(trimmed[r].as_py())) > _INT64_MAX)
        raise _too_large(name, trimmed[row].as_py(), where(row)) from None


def _too_large(name: str, value: str, location: str) -> DataError:
    return DataError(f"{location}: column {name!r} holds {value}, beyond the 64-bit integer range "
                     f"(at most {_INT64_MAX}); remap the ids to smaller integers")


# ------------------------------------------------------------------ timestamps
def _timestamps(table: pa.Table, name: str, unit: str, where: Where) -> np.ndarray:
    """``[N]`` int64 seconds since the epoch."""
    if unit == "iso8601":
        seconds = _iso_seconds(_not_null(table, name, where), name, where)
    else:
        seconds = _integers(table, name, where) // (1000 if unit == "ms" else 1)
    bad = np.flatnonzero(seconds < 0)
    if len(bad):
        raise DataError(f"{where(int(bad[0]))}: column {name!r} is before 1970 ({seconds[bad[0]]} s); "
                        f"timestamps must be non-negative (check timestamp_unit={unit!r})")
    return seconds


def _iso_seconds(column: pa.Array, name: str, where: Where) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        micros = pc.cast(column, pa.timestamp("us", tz=column.type.tz))
        return to_numpy(micros.view(pa.int64())) // 1_000_000
    text = pc.cast(column, pa.string())
    for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            return to_numpy(pc.cast(text, target).view(pa.int64())).astype(np.int64) // 1_000_000
        except pa.ArrowInvalid:
            continue
    row = _first_unparsable_time(text)
    raise DataError(f"{where(row)}: column {name!r} holds {text[row].as_py()!r}, not an ISO 8601 time "
                    f"(e.g. 2020-01-31T12:00:00Z); fix the value or pick another timestamp_unit")


def _first_unparsable_time(text: pa.Array) -> int:
    """Row of the first string no timestamp cast accepts (scans only on the error path)."""
    for row in range(len(text)):
        single = text.slice(row, 1)
        if not any(_casts(single, t) for t in (pa.timestamp("us", tz="UTC"), pa.timestamp("us"))):
            return row
    return 0


def _casts(values: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(values, target)
        return True
    except pa.ArrowInvalid:
        return False


# ------------------------------------------------------------------ other fields
def _actions(
    table: pa.Table, name: str | None, vocab: Sequence[str] | None, where: Where
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``[N]`` int32 action bit masks and the action vocabulary."""
    if name is None:
        return np.ones(table.num_rows, np.int32), ("interact",) if vocab is None else tuple(vocab)
    text = pc.fill_null(pc.cast(table[name].combine_chunks(), pa.string()), "")
    lists = pc.split_pattern(text, "|")
    parents = to_numpy(pc.list_parent_indices(lists)).astype(np.int64)
    names = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    present = to_numpy(pc.not_equal(names, "")).astype(bool)
    parents, names = parents[present], names.filter(pa.array(present))
    if vocab is None:
        vocab = sorted(pc.unique(names).to_pylist())
    vocab = tuple(vocab)
    if len(set(vocab)) != len(vocab):
        raise ConfigError(f"action_vocab {list(vocab)} names an action twice; list each once")
    index = to_numpy(pc.fill_null(pc.index_in(names, value_set=pa.array(vocab, pa.string())), -1)).astype(np.int64)
    if (index < 0).any():
        bad = int(np.flatnonzero(index < 0)[0])
        raise DataError(f"{where(int(parents[bad]))}: action {names[bad].as_py()!r} is not in action_vocab "
                        f"{list(vocab)}; add it to action_vocab or pass action_vocab=None to infer it")
    mask = np.zeros(table.num_rows, np.int32)
    np.bitwise_or.at(mask, parents, (1 << index).astype(np.int32))
    return mask, vocab


def _surfaces(table: pa.Table, name: str | None, where: Where) -> tuple[np.ndarray, tuple[str, ...]]:
    """``[N]`` int64 surface ids and the surface vocabulary (sorted names)."""
    if name is None:
        return np.zeros(table.num_rows, np.int64), ("home",)
    text = pc.cast(_not_null(table, name, where), pa.string())
    surface, vocab = remap_ids(to_numpy(text).astype(str))
    return surface, tuple(str(v) for v in vocab)


def _impressions(table: pa.Table, name: str | None, where: Where) -> np.ndarray:
    """``[N]`` bool from true/false or 1/0."""
    if name is None:
        return np.ones(table.num_rows, bool)
    column = _not_null(table, name, where)
    if pa.types.is_boolean(column.type):
        return to_numpy(column).astype(bool)
    text = to_numpy(pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(column, pa.string())))).astype(str)
    truthy, falsy = np.isin(text, ("true", "1")), np.isin(text, ("false", "0"))
    bad = np.flatnonzero(~(truthy | falsy))
    if len(bad):
        raise DataError(f"{where(int(bad[0]))}: column {name!r} holds {str(text[bad[0]])!r}; use true/false or 1/0")
    return truthy


def _ratings(table: pa.Table, name: str | None, where: Where) -> np.ndarray | None:
    """``[N]`` float32 ratings, or None without a rating column."""
    if name is None:
        return None
    column = _not_null(table, name, where)
    try:
        values = to_numpy(pc.cast(column, pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # locate the bad value (error path only)
        values = np.array([_float_or_nan(v) for v in column.to_pylist()])
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(f"{where(int(bad[0]))}: column {name!r} holds {column[int(bad[0])].as_py()!r}, "
                        f"not a finite number; fix the rating")
    return values.astype(np.float32)


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
