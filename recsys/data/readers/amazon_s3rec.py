"""The Amazon review sets as preprocessed by S3-Rec (CIKM 2020), read into an :class:`EventLog`.

Each line of ``<name>.txt`` is ``user item1 item2 ...``: one user's interactions in time order.
The files carry no timestamps, so an event's ``timestamp`` is its position within its user
(0, 1, 2, ...): it orders a user's events but says nothing about time across users, so a global
time split is meaningless on these sets (use leave-one-out). Every event has the action
"interact" on surface "home".

The optional ``<name>_item2attributes.json`` maps an item id (string) to a list of attribute ids.
With it, the :class:`ItemTable` holds the attribute "attribute" (the item's first attribute id,
remapped; one extra value for items without attributes) and a content embedding: the attribute
multi-hot times a fixed-seed random Gaussian projection (one row per raw attribute id, so an
item's embedding does not depend on which other items are present), L2-normalised.
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.data.readers.common import (
    first_invalid_utf8_line, first_values, l2_normalise_rows, line_of_row, remap_ids, reports_unreadable_input,
    require_file, to_numpy,
)
from recsys.data.schema import DEFAULT_CONTENT_DIM, EventLog, ItemTable
from recsys.errors import DataError

PROJECTION_SEED = 0
_NO_DELIMITER = "\x01"  # the whole line is one field; tokens are split on whitespace after


@reports_unreadable_input("an S3-Rec sequence file")
def read_amazon_s3rec(
    path_to_txt: str | Path,
    attributes_json: str | Path | None = "auto",
    content_dim: int = DEFAULT_CONTENT_DIM,
) -> EventLog:
    """Reads an S3-Rec sequence file into a validated :class:`EventLog`.

    Args:
        path_to_txt: the ``<name>.txt`` file, one ``user item1 item2 ...`` line per user.
        attributes_json: the item-to-attributes JSON; "auto" uses ``<name>_item2attributes.json``
            next to the text file when it exists; None reads no item features (``items`` None).
        content_dim: C of the content embedding built from the attributes.

    Example::

        log = read_amazon_s3rec("amazon-s3rec/Beauty.txt")  # 198,502 events, 22,363 users
    """
    path = require_file(Path(path_to_txt), "S3-Rec sequence file", "pass the <name>.txt file of the S3-Rec data")
    raw_user, raw_item, position = _read_sequences(path)
    user_id, raw_users = remap_ids(raw_user)
    item_id, raw_items = remap_ids(raw_item)
    items = None
    json_path = _attributes_path(path, attributes_json)
    if json_path is not None:
        items = _item_table(_read_attributes(json_path), raw_items, content_dim, json_path)
    n = len(user_id)
    return EventLog.from_arrays(
        user_id=user_id,
        item_id=item_id,
        timestamp=position,
        actions=np.ones(n, np.int32),
        surface=np.zeros(n, np.int64),
        impression=np.ones(n, bool),
        num_users=len(raw_users),
        num_items=len(raw_items),
        action_vocab=("interact",),
        surface_vocab=("home",),
        items=items,
        raw_user_ids=raw_users,
        raw_item_ids=raw_items,
    )


def _read_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N]`` raw user ids, raw item ids and positions within the user, in file order."""
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=["line"]),
            parse_options=pacsv.ParseOptions(delimiter=_NO_DELIMITER, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}),
        )
    except pa.ArrowInvalid:
        bad_line = first_invalid_utf8_line(path)  # scans the file only on this error path
        if bad_line is None:
            raise
        raise DataError(f"{path} line {bad_line} is not valid UTF-8 text; the file must be UTF-8 "
                        f"'user item1 item2 ...' lines: fix or delete the line") from None
    if table.num_rows == 0:
        raise DataError(f"{path} holds no 'user item1 item2 ...' lines; pass the <name>.txt file of the S3-Rec data")
    tokens = pc.utf8_split_whitespace(table["line"].combine_chunks())
    lengths = to_numpy(pc.list_value_length(tokens)).astype(np.int64)
    short = np.flatnonzero(lengths < 2)
    if len(short):
        raise DataError(f"{path} line {line_of_row(path, int(short[0]))}: expected 'user item1 item2 ...' "
                        f"with at least one item; fix or delete the line")
    try:
        values = to_numpy(pc.cast(pc.list_flatten(tokens), pa.int64())).astype(np.int64)
    except pa.ArrowInvalid:
        raise _non_numeric(path) from None
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    users = values[starts]
    _check_unique_users(path, users)
    is_item = np.ones(len(values), bool)
    is_item[starts] = False
    counts = lengths - 1
    user = np.repeat(users, counts)
    position = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return user, values[is_item], position


def _non_numeric(path: Path) -> DataError:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            for token in line.split():
                if not token.lstrip("-").isdigit():
                    return DataError(f"{path} line {number}: {token!r} is not an integer id; "
                                     f"each line must be 'user item1 item2 ...' with integer ids")
                if abs(int(token)) >= 2**63:
                    return DataError(f"{path} line {number}: id {token} is beyond the 64-bit integer range; "
                                     f"remap the ids to smaller integers")
    return DataError(f"{path} holds ids that are not integers; each line must be 'user item1 item2 ...'")


def _check_unique_users(path: Path, users: np.ndarray) -> None:
    order = np.argsort(users, kind="stable")
    repeat = np.flatnonzero(users[order][1:] == users[order][:-1])
    if len(repeat):
        row = int(order[1:][repeat].min())
        raise DataError(f"{path} line {line_of_row(path, row)}: user {users[row]} already has a line; "
                        f"join the user's items into one line in time order")


def _attributes_path(txt: Path, attributes_json: str | Path | None) -> Path | None:
    if attributes_json is None:
        return None
    if attributes_json == "auto":
        candidate = txt.with_name(f"{txt.stem}_item2attributes.json")
        return candidate if candidate.is_file() else None
    fix = "pass the <name>_item2attributes.json file or None"
    return require_file(Path(attributes_json), "item attributes file", fix)


def _read_attributes(path: Path) -> dict[int, list[int]]:
    """Item id -> attribute ids, checked to be integers."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); pass the <name>_item2attributes.json file") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} must hold an object mapping item id -> list of attribute ids")
    out = {}
    for key, values in raw.items():
        if not key.lstrip("-").isdigit() or not isinstance(values, list) or not all(type(v) is int for v in values):
            raise DataError(f"{path}: entry {key!r}: {str(values)[:60]} must map an integer item id "
                            f"to a list of integer attribute ids")
        out[int(key)] = values
    return out


def _item_table(attributes: dict[int, list[int]], raw_items: np.ndarray, content_dim: int, path: Path) -> ItemTable:
    """The :class:`ItemTable` of the items ``raw_items`` (``[I]`` sorted raw ids)."""
    lists = [attributes.get(int(raw), []) for raw in raw_items]
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
    if len(flat) and flat.min() < 0:
        raise DataError(f"{path}: attribute id {flat.min()} is negative; attribute ids must be >= 0")
    parents = np.repeat(np.arange(len(raw_items)), lengths)
    attribute_id, raw_attributes = remap_ids(flat)
    first = first_values(parents, attribute_id, len(raw_items), missing=len(raw_attributes))
    max_raw = int(flat.max()) + 1 if len(flat) else 1
    projection = np.random.default_rng(PROJECTION_SEED).standard_normal((max_raw, content_dim))
    embedding = np.zeros((len(raw_items), content_dim), np.float64)
    np.add.at(embedding, parents, projection[flat])  # multi-hot [I, V] @ projection [V, C]
    return ItemTable(
        content_embedding=l2_normalise_rows(embedding),
        attributes={"attribute": first},
        attribute_cardinality={"attribute": len(raw_attributes) + 1},
    )
