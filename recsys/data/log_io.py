"""The on-disk format of a converted :class:`EventLog`: a directory of Parquet files and JSON.

::

    <path>/
      meta.json        format name and version, sizes, vocabularies, attribute cardinalities
      events.parquet   user_id, item_id, timestamp, actions, surface, impression
                       (+ rating, request_id when present)
      items.parquet    num_items rows: content_embedding (fixed-size list<float32>[C]) and one
                       int64 column per attribute, when the log has an ItemTable
      users.parquet    raw_user_id (index = our user id), when the log keeps raw ids
      item_ids.parquet raw_item_id (index = our item id), when the log keeps raw ids

:func:`write_log` writes into a temporary sibling directory and renames it into place, so a
reader never sees a half-written log. :func:`read_log` checks every file and validates the log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.directory_io import atomic_directory, read_meta, write_meta
from recsys.data.schema import EventLog, ItemTable
from recsys.errors import DataError

FORMAT_NAME = "recsys-event-log"
FORMAT_VERSION = 1
EVENTS, ITEMS = "events.parquet", "items.parquet"
USERS, ITEM_IDS = "users.parquet", "item_ids.parquet"
_EVENT_COLUMNS = EventLog._COLUMNS + EventLog._OPTIONAL_COLUMNS
_ATTRIBUTE_PREFIX = "attribute:"


def write_log(log: EventLog, path: str | Path, overwrite: bool = False) -> Path:
    """Writes ``log`` to the directory ``path`` atomically (temp directory, then rename).

    Args:
        log: a validated log.
        path: the target directory; must not exist unless ``overwrite``.
        overwrite: replace an existing directory.
    """
    log.validate()
    with atomic_directory(path, overwrite) as staging:
        _write_files(log, staging)
    return Path(path)


def read_log(path: str | Path) -> EventLog:
    """Reads a directory written by :func:`write_log` and validates it."""
    path = Path(path)
    meta = _read_meta(path)
    try:
        log = _log_from_files(path, meta)
    except (ValueError, TypeError, AttributeError, OverflowError, pa.ArrowException) as exc:  # a column of the wrong type
        raise DataError(f"{path}: a file does not hold what meta.json describes ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); write the log again with write_log") from None
    try:
        log.validate()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return log


def _log_from_files(path: Path, meta: dict) -> EventLog:
    events = _read_parquet(path / EVENTS, [c for c in _EVENT_COLUMNS if c in meta["event_columns"]])
    columns = {c: events[c].to_numpy() for c in events.column_names}
    return EventLog(
        user_id=columns["user_id"].astype(np.int64),
        item_id=columns["item_id"].astype(np.int64),
        timestamp=columns["timestamp"].astype(np.int64),
        actions=columns["actions"].astype(np.int32),
        surface=columns["surface"].astype(np.int64),
        impression=columns["impression"].astype(bool),
        num_users=int(meta["num_users"]),
        num_items=int(meta["num_items"]),
        action_vocab=tuple(meta["action_vocab"]),
        surface_vocab=tuple(meta["surface_vocab"]),
        items=_read_items(path, meta),
        raw_user_ids=_read_ids(path / USERS, "raw_user_id") if meta["has_raw_user_ids"] else None,
        raw_item_ids=_read_ids(path / ITEM_IDS, "raw_item_id") if meta["has_raw_item_ids"] else None,
        rating=columns["rating"].astype(np.float32) if "rating" in columns else None,
        request_id=columns["request_id"].astype(np.int64) if "request_id" in columns else None,
    )


# ------------------------------------------------------------------ writing
def _write_files(log: EventLog, folder: Path) -> None:
    events = {c: getattr(log, c) for c in _EVENT_COLUMNS if getattr(log, c) is not None}
    pq.write_table(pa.table(events), folder / EVENTS)
    if log.items is not None:
        pq.write_table(_items_table(log.items), folder / ITEMS)
    if log.raw_user_ids is not None:
        pq.write_table(pa.table({"raw_user_id": log.raw_user_ids}), folder / USERS)
    if log.raw_item_ids is not None:
        pq.write_table(pa.table({"raw_item_id": log.raw_item_ids}), folder / ITEM_IDS)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_events": len(log),
        "num_users": log.num_users,
        "num_items": log.num_items,
        "action_vocab": list(log.action_vocab),
        "surface_vocab": list(log.surface_vocab),
        "event_columns": list(events),
        "has_items": log.items is not None,
        "content_dim": log.items.content_dim if log.items is not None else None,
        "attribute_cardinality": dict(log.items.attribute_cardinality) if log.items is not None else {},
        "has_raw_user_ids": log.raw_user_ids is not None,
        "has_raw_item_ids": log.raw_item_ids is not None,
    }
    write_meta(folder, meta)


def _items_table(items: ItemTable) -> pa.Table:
    flat = pa.array(items.content_embedding.reshape(-1), pa.float32())
    columns = {"content_embedding": pa.FixedSizeListArray.from_arrays(flat, items.content_dim)}
    for name, values in items.attributes.items():
        columns[_ATTRIBUTE_PREFIX + name] = pa.array(values, pa.int64())
    return pa.table(columns)


# ------------------------------------------------------------------ reading
def _read_meta(path: Path) -> dict:
    required = ("num_users", "num_items", "action_vocab", "surface_vocab", "event_columns", "has_items",
                "attribute_cardinality", "has_raw_user_ids", "has_raw_item_ids")
    fix = "convert the source again with write_log"
    meta = read_meta(path, FORMAT_NAME, FORMAT_VERSION, required, fix=fix)
    _check_meta_types(meta, path / "meta.json", fix)
    return meta


def _check_meta_types(meta: dict, where: Path, fix: str) -> None:
    """Each field of meta.json has the kind of value write_log writes, else a DataError naming it."""
    def is_count(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63

    def is_names(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    checks = {
        "num_users": (is_count, "a non-negative integer"),
        "num_items": (is_count, "a non-negative integer"),
        "action_vocab": (is_names, "a list of names"),
        "surface_vocab": (is_names, "a list of names"),
        "event_columns": (is_names, "a list of column names"),
        "has_items": (lambda v: isinstance(v, bool), "true or false"),
        "has_raw_user_ids": (lambda v: isinstance(v, bool), "true or false"),
        "has_raw_item_ids": (lambda v: isinstance(v, bool), "true or false"),
        "attribute_cardinality": (
            lambda v: isinstance(v, dict) and all(is_count(c) and c > 0 for c in v.values()),
            "a mapping of attribute name to a positive integer",
        ),
    }
    for key, (ok, kind) in checks.items():
        if not ok(meta[key]):
            raise DataError(f"{where}: {key!r} is {meta[key]!r}, not {kind}; {fix}")


def _read_parquet(file: Path, columns: list[str]) -> pa.Table:
    if not file.is_file():
        raise DataError(f"{file} not found; the log directory is incomplete, write it again with write_log")
    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{file} could not be read ({exc}); write the log again with write_log") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{file} lacks the column(s) {missing}; found {table.column_names}; write the log again")
    return table


def _read_items(path: Path, meta: dict) -> ItemTable | None:
    if not meta["has_items"]:
        return None
    cardinality = {k: int(v) for k, v in meta["attribute_cardinality"].items()}
    table = _read_parquet(path / ITEMS, ["content_embedding"] + [_ATTRIBUTE_PREFIX + k for k in cardinality])
    embedding = table["content_embedding"].combine_chunks()
    dim = embedding.type.list_size
    values = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ItemTable(
        content_embedding=values.reshape(len(embedding), dim),
        attributes={k: table[_ATTRIBUTE_PREFIX + k].to_numpy().astype(np.int64) for k in cardinality},
        attribute_cardinality=cardinality,
    )


def _read_ids(file: Path, column: str) -> np.ndarray:
    """Raw ids as written: integers as int64, strings as a numpy str array."""
    values = _read_parquet(file, [column])[column]
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return np.asarray(values.to_pylist(), dtype=str)
    return values.to_numpy()
