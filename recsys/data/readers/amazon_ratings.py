"""Amazon "ratings only" files (McAuley et al., 2014 Amazon product data), read into an :class:`EventLog`.

SNAP publishes one file per category, ``ratings_<Category>.csv`` (e.g. ``ratings_Books.csv``,
22,507,155 lines), fetched by :func:`recsys.data.download.fetch_amazon_ratings`. No header; one
rating per line, four comma-separated fields::

    A1ZQ1LUQ9R6JHZ,0001712799,5.0,1191456000
    user           item       stars timestamp (unix seconds; Amazon keeps the day only)

Preprocessing, in this order:

1. Duplicates: ``duplicates="keep"`` keeps repeated ``(user, item, timestamp)`` lines as separate
   events (as HSTU's public preprocessing does, so they count towards the thresholds); "drop"
   keeps the first of each; "error" stops at the first repeat, naming both lines.
2. Filtering by interaction counts (``filtering``):

   - ``"single_pass"`` (default; HSTU's public preprocessing of Amazon Books): count every user's
     and every item's ratings over the whole file once; keep the ratings whose user has at least
     ``min_user_interactions`` and whose item has at least ``min_item_interactions``. The items
     kept now form the item id space. Then drop the users left with fewer than
     ``min_user_interactions`` ratings; items are not counted again, so an item can end up with
     fewer ratings than the minimum, or none (it keeps its id: it stays a ranking candidate and
     a negative, as in the reference, whose ``ratings_Books.csv`` run asserts 695,762 items).
   - ``"k_core"``: repeat both filters until every remaining user and item has at least its
     minimum (the k-core); only items with ratings get ids.

3. Ids: users and items are numbered ``0, 1, ...`` in the sorted (byte-wise, i.e. plain string
   order for ASCII ids) order of their raw ids, among those kept; ``raw_user_ids`` /
   ``raw_item_ids`` map back. With the defaults, item ids are the codes of HSTU's preprocessing
   (its data loader adds one to keep 0 for padding).
4. Order: events are sorted by ``(user, timestamp)``; a user's ratings with the same timestamp
   (common: timestamps are days) keep their order in the file.

Every rating is one event on surface "home", shown by the system (``impression`` True), with
actions from the rating as in the MovieLens reader (:func:`ratings_to_actions`): "rate" on every
event (so every event is engaged), "like" at ``rating >= like_min``, "hide" at
``rating <= hide_max``; or ``actions="levels"``: one action per star. The files carry no item
features: ``items`` is None.

On ``ratings_Books.csv`` the defaults should give the HSTU setting: 695,762 items (the count its
preprocessing asserts) and, as the HSTU paper reports, 694,897 users and 10,053,086 events.
Reading it takes about half a minute and a few GB of memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.data.readers.common import (
    reports_unreadable_input,
    first_duplicate,
    first_null,
    keep_first_occurrences,
    line_of_row,
    require_file,
    to_numpy,
)
from recsys.data.readers.movielens import ACTION_SCHEMES, ratings_event_log
from recsys.data.schema import EventLog
from recsys.errors import ConfigError, DataError

FILTERINGS = ("single_pass", "k_core")
DUPLICATE_POLICIES = ("keep", "drop", "error")
MIN_RATING, MAX_RATING = 1.0, 5.0
COLUMNS = ("user", "item", "rating", "timestamp")
_TYPES = {"user": pa.string(), "item": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()}
_FIX_FILE = "pass an Amazon ratings-only CSV (user,item,rating,timestamp per line, no header), e.g. ratings_Books.csv"


@reports_unreadable_input("an Amazon ratings CSV (user,item,rating,timestamp)")
def read_amazon_ratings(
    path: str | Path,
    min_user_interactions: int = 5,
    min_item_interactions: int = 5,
    filtering: str = "single_pass",
    actions: str = "rate_like_hide",
    like_min: float = 4.0,
    hide_max: float = 2.0,
    duplicates: str = "keep",
) -> EventLog:
    """Reads an Amazon ratings-only CSV into a validated, (user, time)-sorted :class:`EventLog`.

    Args:
        path: the ``ratings_<Category>.csv`` file.
        min_user_interactions: users with fewer ratings are dropped (1 keeps all).
        min_item_interactions: items with fewer ratings are dropped (1 keeps all).
        filtering: "single_pass" (HSTU's preprocessing) or "k_core" (see the module docstring).
        actions: "rate_like_hide" or "levels", as for MovieLens.
        like_min: ratings at or above this set "like".
        hide_max: ratings at or below this set "hide".
        duplicates: "keep", "drop" or "error" for repeated (user, item, timestamp) lines.

    Example::

        log = read_amazon_ratings("data/amzn-books/ratings_Books.csv")  # 695,762 items
    """
    _check_options(min_user_interactions, min_item_interactions, filtering, actions, duplicates)
    path = require_file(Path(path), "Amazon ratings file", _FIX_FILE)
    table = _read_table(path)
    user, raw_users = dense_codes(table["user"])
    item, raw_items = dense_codes(table["item"])
    rating = to_numpy(table["rating"]).astype(np.float64)
    timestamp = to_numpy(table["timestamp"]).astype(np.int64)
    _check_values(path, rating, timestamp)
    if duplicates != "keep":
        keep = _duplicates_policy(path, duplicates, user, item, timestamp, raw_users, raw_items)
        user, item, rating, timestamp = user[keep], item[keep], rating[keep], timestamp[keep]
    keep, item_space = interaction_filter(
        user, item, len(raw_users), len(raw_items), min_user_interactions, min_item_interactions, filtering
    )
    if not keep.any():
        raise DataError(f"{path}: no rating is left after filtering with min_user_interactions="
                        f"{min_user_interactions}, min_item_interactions={min_item_interactions}; lower them")
    kept = np.flatnonzero(keep)
    kept = kept[time_order(user[kept], timestamp[kept])]
    user, item, rating, timestamp = user[kept], item[kept], rating[kept], timestamp[kept]
    user_kept = np.bincount(user, minlength=len(raw_users)) > 0
    user_id, item_id = _renumber(user, user_kept), _renumber(item, item_space)
    return ratings_event_log(
        user_id, item_id, timestamp, rating, actions, like_min, hide_max,
        num_users=int(user_kept.sum()),
        num_items=int(item_space.sum()),
        raw_user_ids=to_numpy(raw_users.filter(pa.array(user_kept))),
        raw_item_ids=to_numpy(raw_items.filter(pa.array(item_space))),
        sort=False,  # already in time_order; from_arrays still checks the order
    )


# ------------------------------------------------------------------ ids and filtering
def dense_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Numbers the distinct strings of ``column`` in sorted order.

    Args:
        column: ``[N]`` strings without nulls.

    Returns:
        ``([N] int64 codes in 0..K-1, [K] sorted distinct strings)``: ``sorted[codes[n]] == column[n]``.
    """
    encoded = pc.dictionary_encode(column.combine_chunks())  # one array: one dictionary
    dictionary = encoded.dictionary
    dictionary_index = to_numpy(encoded.indices).astype(np.int64)
    order = to_numpy(pc.sort_indices(dictionary)).astype(np.int64)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[dictionary_index], dictionary.take(pa.array(order))


def interaction_filter(
    user: np.ndarray,
    item: np.ndarray,
    num_users: int,
    num_items: int,
    min_user: int,
    min_item: int,
    filtering: str = "single_pass",
) -> tuple[np.ndarray, np.ndarray]:
    """Which events and items survive the minimum-interaction filter (see the module docstring).

    Args:
        user / item: ``[N]`` int64 ids in ``0..num_users-1`` / ``0..num_items-1``.
        num_users / num_items: id space sizes.
        min_user / min_item: least number of events a kept user / item has.
        filtering: "single_pass" or "k_core".

    Returns:
        ``([N] bool kept events, [num_items] bool items that keep an id)``.
    """
    if filtering not in FILTERINGS:
        raise ConfigError(f"filtering={filtering!r} is not one of {list(FILTERINGS)}")
    everything = np.ones(len(user), bool)
    if filtering == "single_pass":
        keep = _meets_minimums(user, item, everything, num_users, num_items, min_user, min_item)
        item_space = np.bincount(item[keep], minlength=num_items) > 0
        return _meets_minimums(user, item, keep, num_users, num_items, min_user, 1), item_space
    keep = everything
    while True:  # each round only removes events; stops when a round removes none
        survives = _meets_minimums(user, item, keep, num_users, num_items, min_user, min_item)
        if np.array_equal(survives, keep):
            return keep, np.bincount(item[keep], minlength=num_items) > 0
        keep = survives


def _meets_minimums(
    user: np.ndarray, item: np.ndarray, keep: np.ndarray, num_users: int, num_items: int, min_user: int, min_item: int
) -> np.ndarray:
    """``[N]`` bool: kept events whose user and item have at least the minimum kept events."""
    user_count = np.bincount(user[keep], minlength=num_users)
    item_count = np.bincount(item[keep], minlength=num_items)
    return keep & (user_count[user] >= min_user) & (item_count[item] >= min_item)


def time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """``[N]`` stable order by (user, timestamp): ties keep their order.

    Args:
        user: ``[N]`` int64 ids >= 0.
        timestamp: ``[N]`` int64 seconds >= 0.
    """
    if len(user) == 0:
        return np.zeros(0, np.int64)
    span = int(timestamp.max()) + 1
    if (int(user.max()) + 1) * span >= 2**62:  # the one-key sort would overflow
        return np.lexsort((timestamp, user))
    return np.argsort(user * span + timestamp, kind="stable")  # one sort pass instead of lexsort's two


def _renumber(ids: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``[N]`` ids (all of them ``kept``, a ``[K]`` bool) renumbered ``0..kept.sum()-1`` in the same order."""
    return (np.cumsum(kept) - 1)[ids].astype(np.int64)


# ------------------------------------------------------------------ parsing and checks
def _check_options(min_user: int, min_item: int, filtering: str, actions: str, duplicates: str) -> None:
    for name, value in (("min_user_interactions", min_user), ("min_item_interactions", min_item)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name}={value!r} must be an integer >= 1 (1 keeps everyone)")
    if filtering not in FILTERINGS:
        raise ConfigError(f"filtering={filtering!r} is not one of {list(FILTERINGS)}")
    if actions not in ACTION_SCHEMES:
        raise ConfigError(f"actions={actions!r} is not one of {list(ACTION_SCHEMES)}")
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(f"duplicates={duplicates!r} is not one of {list(DUPLICATE_POLICIES)}")


def _duplicates_policy(
    path: Path, duplicates: str, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray,
    raw_users: pa.Array, raw_items: pa.Array,
) -> np.ndarray:
    """``[N]`` bool keeping the first of repeated (user, item, timestamp) lines ("drop"), or raises ("error")."""
    if duplicates == "error":
        found = first_duplicate(user, item, timestamp)
        if found is not None:
            row, original = found
            raise DataError(
                f"{path} line {line_of_row(path, row)} repeats line {line_of_row(path, original)}: user "
                f"{raw_users[int(user[row])].as_py()}, item {raw_items[int(item[row])].as_py()}, timestamp "
                f"{timestamp[row]}; delete it, or pass duplicates=\"drop\" (keep the first) or \"keep\""
            )
    return keep_first_occurrences(user, item, timestamp)


def _read_table(path: Path) -> pa.Table:
    """The four columns in file order; a line that does not parse raises a DataError naming it."""
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=list(COLUMNS)),
            parse_options=pacsv.ParseOptions(delimiter=",", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=_TYPES, null_values=[""], strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise _locate_bad_line(path, str(exc)) from None
    if table.num_rows == 0:
        raise DataError(f"{path} holds no ratings; {_FIX_FILE}")
    for name in COLUMNS:
        row = first_null(table[name])
        if row is not None:
            raise DataError(f"{path} line {line_of_row(path, row)}: the {name} field is empty; "
                            f"fill it in or delete the line")
    return table


def _check_values(path: Path, rating: np.ndarray, timestamp: np.ndarray) -> None:
    bad = np.flatnonzero(~((rating >= MIN_RATING) & (rating <= MAX_RATING)))  # NaN fails too
    if len(bad):
        raise DataError(f"{path} line {line_of_row(path, int(bad[0]))}: rating {rating[bad[0]]} is outside "
                        f"{MIN_RATING:g}..{MAX_RATING:g} stars; fix or delete the line")
    bad = np.flatnonzero(timestamp < 0)
    if len(bad):
        raise DataError(f"{path} line {line_of_row(path, int(bad[0]))}: timestamp {timestamp[bad[0]]} is "
                        f"negative; timestamps are seconds since 1970, fix or delete the line")


def _locate_bad_line(path: Path, arrow_message: str) -> DataError:
    """A DataError naming the first line that is not ``user,item,rating,timestamp`` (error path only)."""
    parsers = (str, str, float, int)
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            text = line.rstrip("\r\n")
            if not text:
                continue
            fields = text.split(",")
            if len(fields) != len(COLUMNS):
                return DataError(f"{path} line {number}: expected 4 comma-separated fields (user,item,rating,"
                                 f"timestamp), found {len(fields)}: {text[:80]!r}; fix or delete the line")
            for name, parse, value in zip(COLUMNS, parsers, fields):
                try:
                    parse(value)
                except ValueError:
                    kind = "a number" if parse is float else "an integer (unix seconds)"
                    header = "; the file has no header line, delete it" if number == 1 else ""
                    return DataError(f"{path} line {number}: {name} {value!r} is not {kind}; "
                                     f"fix or delete the line{header}")
    return DataError(f"{path} could not be parsed ({arrow_message}); {_FIX_FILE}")
