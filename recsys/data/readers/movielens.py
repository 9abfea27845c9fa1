"""MovieLens ratings in the files GroupLens publishes, read into an :class:`EventLog`.

Variants and their files (detected from the files present when ``variant`` is None):

- ``ml-100k``: ``u.data`` (tab-separated ``user item rating timestamp``) and ``u.item``
  (pipe-separated latin-1 ``id|title|release date|video release date|url|19 genre flags``).
- ``ml-1m``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
  (``MovieID::Title::Genres``, genres joined by ``|``), latin-1.
- ``ml-20m`` / ``ml-latest`` / ``ml-latest-small``: ``ratings.csv`` with header
  ``userId,movieId,rating,timestamp`` and an optional ``movies.csv`` (``movieId,title,genres``).

Every rating is one event on surface "home", shown by the system (``impression`` True). Ratings
become actions in one of two vocabularies:

- ``"rate_like_hide"``: ("rate", "like", "hide"): "rate" on every rating, "like" when
  ``rating >= like_min``, "hide" when ``rating <= hide_max``.
- ``"levels"``: ("rating_1" .. "rating_5"): one action per star level, half stars rounded up.

Items are the distinct rated movies. When the movie file exists, the :class:`ItemTable` holds the
genre multi-hot, L2-normalised, in the first content dimensions (zeros after), the attribute
"genre" (the first listed genre; one extra value for none) and "decade" (of the release year;
one extra value for unknown). Rated movies missing from the movie file get a zero embedding and
the extra values. Without a movie file ``items`` is None.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.data.readers.common import (
    reports_unreadable_input,
    first_null,
    first_values,
    handle_duplicates,
    l2_normalise_rows,
    line_of_row,
    remap_ids,
    require_file,
    to_numpy,
)
from recsys.data.schema import DEFAULT_CONTENT_DIM, EventLog, ItemTable
from recsys.errors import ConfigError, DataError

VARIANTS = ("ml-100k", "ml-1m", "ml-20m", "ml-latest", "ml-latest-small")
ACTION_SCHEMES = ("rate_like_hide", "levels")
RATE_LIKE_HIDE = ("rate", "like", "hide")
LEVELS = tuple(f"rating_{k}" for k in range(1, 6))
MIN_RATING, MAX_RATING = 0.5, 5.0
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
DOUBLE_COLON = "\x1f"  # ml-1m's "::" separator becomes one character pyarrow can split on


@dataclass(frozen=True)
class _Format:
    """Where one variant keeps its ratings and movies and how the text is laid out."""

    ratings_file: str
    movies_file: str
    delimiter: str
    movies_delimiter: str
    header: bool
    encoding: str


_FORMATS = {
    "ml-100k": _Format("u.data", "u.item", "\t", "|", False, "latin-1"),
    "ml-1m": _Format("ratings.dat", "movies.dat", "::", "::", False, "latin-1"),
    "csv": _Format("ratings.csv", "movies.csv", ",", ",", True, "utf-8"),
}
_RATING_COLUMNS = ("user", "item", "rating", "timestamp")


@dataclass
class _Movies:
    """Item-file contents: ``[M]`` raw ids, ``[M, G]`` genre multi-hot, ``[M]`` first genre and year."""

    raw_ids: np.ndarray
    genres: np.ndarray
    first_genre: np.ndarray
    year: np.ndarray  # -1 = unknown


@reports_unreadable_input("a MovieLens folder")
def read_movielens(
    path: str | Path,
    variant: str | None = None,
    actions: str = "rate_like_hide",
    like_min: float = 4.0,
    hide_max: float = 2.0,
    content_dim: int = DEFAULT_CONTENT_DIM,
    duplicates: str = "error",
) -> EventLog:
    """Reads a MovieLens folder into a validated, (user, time)-sorted :class:`EventLog`.

    Args:
        path: folder holding the variant's files (``u.data``, ``ratings.dat`` or ``ratings.csv``).
        variant: one of ``VARIANTS``; None detects it from the files present.
        actions: "rate_like_hide" or "levels" (see the module docstring).
        like_min: ratings at or above this set "like".
        hide_max: ratings at or below this set "hide".
        content_dim: C of the item content embedding; must be at least the number of genres.
        duplicates: "error" on a repeated (user, movie, timestamp), or "drop" to keep the first.

    Example::

        log = read_movielens("data/ml-100k")  # 100,000 events, 943 users, 1,682 items
    """
    if actions not in ACTION_SCHEMES:
        raise ConfigError(f"actions={actions!r} is not one of {list(ACTION_SCHEMES)}")
    folder = Path(path)
    fmt = _FORMATS[_format_key(detect_variant(folder) if variant is None else variant)]
    ratings_path = require_file(
        folder / fmt.ratings_file, "MovieLens ratings file", "point path at the unzipped MovieLens folder"
    )
    user, item, rating, timestamp = _read_ratings(ratings_path, fmt)
    where = _row_namer(ratings_path, fmt)
    keep = handle_duplicates(user, item, timestamp, duplicates, where)
    if keep is not None:
        user, item, rating, timestamp = user[keep], item[keep], rating[keep], timestamp[keep]
    user_id, raw_users = remap_ids(user)
    item_id, raw_items = remap_ids(item)
    movies_path = folder / fmt.movies_file
    items = None
    if movies_path.is_file():
        items = _item_table(_read_movies(movies_path, fmt), raw_items, content_dim, movies_path)
    return ratings_event_log(
        user_id, item_id, timestamp, rating, actions, like_min, hide_max,
        num_users=len(raw_users), num_items=len(raw_items), items=items, raw_user_ids=raw_users, raw_item_ids=raw_items,
    )


def detect_variant(folder: Path) -> str:
    """The variant whose ratings file ``folder`` holds ("ml-latest" stands for every CSV variant)."""
    for variant, name in (("ml-100k", "u.data"), ("ml-1m", "ratings.dat"), ("ml-latest", "ratings.csv")):
        if (Path(folder) / name).is_file():
            return variant
    found = sorted(p.name for p in Path(folder).iterdir())[:20] if Path(folder).is_dir() else "nothing (no such folder)"
    raise DataError(
        f"no MovieLens ratings file (u.data, ratings.dat or ratings.csv) in {folder}; found {found}; "
        f"point path at the unzipped MovieLens folder or fetch it with recsys.data.download.fetch_movielens"
    )


def ratings_to_actions(
    rating: np.ndarray, scheme: str, like_min: float = 4.0, hide_max: float = 2.0
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``[N]`` ratings -> (``[N]`` int32 action masks, action vocabulary) under ``scheme``."""
    if scheme == "levels":
        level = np.clip(np.ceil(rating), 1, 5).astype(np.int32)  # half stars round up
        return (1 << (level - 1)).astype(np.int32), LEVELS
    if scheme != "rate_like_hide":
        raise ConfigError(f"actions={scheme!r} is not one of {list(ACTION_SCHEMES)}")
    mask = np.ones(len(rating), np.int32)
    mask |= np.where(rating >= like_min, 2, 0).astype(np.int32)
    mask |= np.where(rating <= hide_max, 4, 0).astype(np.int32)
    return mask, RATE_LIKE_HIDE


def ratings_event_log(
    user_id: np.ndarray, item_id: np.ndarray, timestamp: np.ndarray, rating: np.ndarray,
    scheme: str, like_min: float, hide_max: float, **log_fields,
) -> EventLog:
    """The event log of explicit ratings: one impression on the single surface "home" per rating,
    its actions from :func:`ratings_to_actions`, the rating kept as a float32 column.

    Args:
        user_id / item_id / timestamp / rating: ``[N]`` each.
        scheme / like_min / hide_max: as :func:`ratings_to_actions`.
        log_fields: the rest of :meth:`EventLog.from_arrays` (num_users, num_items, raw ids, ...).
    """
    mask, vocab = ratings_to_actions(rating, scheme, like_min, hide_max)
    return EventLog.from_arrays(
        user_id=user_id,
        item_id=item_id,
        timestamp=timestamp,
        actions=mask,
        surface=np.zeros(len(user_id), np.int64),
        impression=np.ones(len(user_id), bool),
        action_vocab=vocab,
        surface_vocab=("home",),
        rating=rating.astype(np.float32),
        **log_fields,
    )


# ------------------------------------------------------------------ ratings
def _format_key(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r} is not one of {list(VARIANTS)} (or None to detect it)")
    return variant if variant in ("ml-100k", "ml-1m") else "csv"


def _row_namer(path: Path, fmt: _Format):
    return lambda row: f"{path} line {line_of_row(path, row, int(fmt.header), fmt.encoding)}"


def _open_text(path: Path, delimiter: str):
    """The file as pyarrow input, with "::" turned into a single-character delimiter."""
    if delimiter != "::":
        return str(path), delimiter
    data = path.read_bytes().replace(b"::", DOUBLE_COLON.encode())
    return io.BytesIO(data), DOUBLE_COLON


def _read_ratings(path: Path, fmt: _Format) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``[N]`` raw user ids, raw item ids, float64 ratings and int64 timestamps in file order."""
    source, delimiter = _open_text(path, fmt.delimiter)
    types = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=list(_RATING_COLUMNS), skip_rows=int(fmt.header), encoding=fmt.encoding
            ),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""]),
        )
    except pa.ArrowInvalid as exc:
        raise _locate_bad_line(path, fmt, str(exc)) from None
    if table.num_rows == 0:
        raise DataError(f"{path} holds no ratings; check that it is a complete MovieLens ratings file")
    if fmt.header:
        _check_header(path, fmt)
    for name in _RATING_COLUMNS:
        row = first_null(table[name])
        if row is not None:
            raise DataError(f"{path} line {line_of_row(path, row, int(fmt.header), fmt.encoding)}: "
                            f"the {name} field is empty; fill it in or delete the line")
    user, item, rating, timestamp = (to_numpy(table[c]) for c in _RATING_COLUMNS)
    _check_values(path, fmt, rating, timestamp)
    return user.astype(np.int64), item.astype(np.int64), rating.astype(np.float64), timestamp.astype(np.int64)


def _check_header(path: Path, fmt: _Format) -> None:
    with open(path, encoding=fmt.encoding) as f:
        header = f.readline().strip().split(",")
    if header[:4] != ["userId", "movieId", "rating", "timestamp"]:
        raise DataError(f"{path} line 1: expected the header userId,movieId,rating,timestamp, found columns {header}")


def _check_values(path: Path, fmt: _Format, rating: np.ndarray, timestamp: np.ndarray) -> None:
    bad = np.flatnonzero(timestamp < 0)
    if len(bad):
        line = line_of_row(path, int(bad[0]), int(fmt.header), fmt.encoding)
        raise DataError(f"{path} line {line}: timestamp {timestamp[bad[0]]} is negative; "
                        f"timestamps are seconds since 1970, fix or delete the line")
    bad = np.flatnonzero(~((rating >= MIN_RATING) & (rating <= MAX_RATING)))  # NaN fails too
    if len(bad):
        line = line_of_row(path, int(bad[0]), int(fmt.header), fmt.encoding)
        raise DataError(f"{path} line {line}: rating {rating[bad[0]]} is outside {MIN_RATING}..{MAX_RATING}; "
                        f"fix or delete the line")


def _locate_bad_line(path: Path, fmt: _Format, arrow_message: str) -> DataError:
    """A DataError naming the first line that does not parse as ``user item rating timestamp``."""
    parsers = (int, int, float, int)
    with open(path, encoding=fmt.encoding, errors="replace") as f:
        for number, line in enumerate(f, start=1):
            text = line.rstrip("\r\n")
            if (fmt.header and number == 1) or not text:
                continue
            fields = text.split(fmt.delimiter)
            if len(fields) != 4:
                return DataError(f"{path} line {number}: expected 4 fields separated by {fmt.delimiter!r} "
                                 f"(user, item, rating, timestamp), found {len(fields)}: {text[:80]!r}; "
                                 f"fix or delete the line")
            for name, parse, value in zip(_RATING_COLUMNS, parsers, fields):
                try:
                    parse(value)
                except ValueError:
                    return DataError(f"{path} line {number}: {name} {value!r} is not a number; fix or delete the line")
    return DataError(f"{path} could not be parsed ({arrow_message}); check that it is a MovieLens ratings file")


# ------------------------------------------------------------------ movies
def _read_movies(path: Path, fmt: _Format) -> _Movies:
    """Reads ``u.item``, ``movies.dat`` or ``movies.csv``."""
    source, delimiter = _open_text(path, fmt.movies_delimiter)
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(autogenerate_column_names=not fmt.header, encoding=fmt.encoding),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if fmt.header else False),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path} could not be parsed: {exc}; check that it is the variant's movie file") from None
    if table.num_rows == 0:
        raise DataError(f"{path} holds no movies; delete it or replace it with the variant's complete movie file")
    if table.num_columns < 3:
        raise DataError(f"{path}: expected at least 3 columns (id, title, genres), found {table.column_names}")
    id_column = table.column(0)
    if not pa.types.is_integer(id_column.type) or id_column.null_count:
        raise DataError(f"{path}: the first column (movie id) must hold integers, found {id_column.type}; "
                        f"check that it is the variant's movie file")
    raw_ids = to_numpy(id_column).astype(np.int64)
    _check_unique_movies(path, fmt, raw_ids)
    if fmt is _FORMATS["ml-100k"]:
        return _ml100k_movies(path, table, raw_ids)
    return _listed_genre_movies(table, raw_ids)


def _check_unique_movies(path: Path, fmt: _Format, raw_ids: np.ndarray) -> None:
    order = np.argsort(raw_ids, kind="stable")
    repeat = np.flatnonzero(raw_ids[order][1:] == raw_ids[order][:-1])
    if len(repeat):
        row = int(order[1:][repeat].min())
        line = line_of_row(path, row, int(fmt.header), fmt.encoding)
        raise DataError(f"{path} line {line}: movie id {raw_ids[row]} appears twice; keep one line per movie")


def _ml100k_movies(path: Path, table: pa.Table, raw_ids: np.ndarray) -> _Movies:
    num_genres = len(ML100K_GENRES)
    if table.num_columns != 5 + num_genres:
        raise DataError(f"{path}: expected 24 '|'-separated columns (id, title, dates, url, 19 genre flags), "
                        f"found {table.num_columns}; check that it is ml-100k's u.item")
    flags = np.stack([to_numpy(pc.cast(table.column(5 + g), pa.int64())) for g in range(num_genres)], axis=1)
    genres = (flags > 0).astype(np.float32)
    first = np.where(genres.any(axis=1), np.argmax(genres, axis=1), num_genres)
    year = _year(pc.cast(table.column(2), pa.string()), r"(?P<year>\d{4})\s*$")
    return _Movies(raw_ids, genres, first.astype(np.int64), year)


def _listed_genre_movies(table: pa.Table, raw_ids: np.ndarray) -> _Movies:
    lists = pc.split_pattern(pc.cast(table.column(2), pa.string()), "|")
    parents = to_numpy(pc.list_parent_indices(lists)).astype(np.int64)
    names = pc.list_flatten(lists)
    listed = to_numpy(pc.and_(pc.not_equal(names, NO_GENRES), pc.not_equal(names, ""))).astype(bool)
    vocab = pc.unique(pc.filter(names, pa.array(listed))).to_pylist()
    vocab = pa.array(sorted(vocab), pa.string())
    index = to_numpy(pc.fill_null(pc.index_in(names, value_set=vocab), -1)).astype(np.int64)
    parents, index = parents[listed], index[listed]
    genres = np.zeros((len(raw_ids), len(vocab)), np.float32)
    genres[parents, index] = 1.0
    first = first_values(parents, index, len(raw_ids), missing=len(vocab))
    year = _year(pc.cast(table.column(1), pa.string()), r"\((?P<year>\d{4})\)\s*$")
    return _Movies(raw_ids, genres, first, year)


def _year(text: pa.ChunkedArray, pattern: str) -> np.ndarray:
    """``[M]`` int64 year matched by ``pattern`` in ``text``, -1 where none."""
    found = pc.struct_field(pc.extract_regex(text, pattern), [0])
    return to_numpy(pc.fill_null(pc.cast(found, pa.int64()), -1)).astype(np.int64)


def _item_table(movies: _Movies, raw_items: np.ndarray, content_dim: int, path: Path) -> ItemTable:
    """The :class:`ItemTable` of the rated movies ``raw_items`` (sorted raw ids)."""
    num_genres = movies.genres.shape[1]
    if content_dim < num_genres:
        raise DataError(f"content_dim={content_dim} is smaller than the {num_genres} genres in {path}; "
                        f"pass content_dim >= {num_genres}")
    order = np.argsort(movies.raw_ids)
    slot = np.clip(np.searchsorted(movies.raw_ids[order], raw_items), 0, len(order) - 1)
    row = order[slot]
    found = movies.raw_ids[row] == raw_items  # rated movies missing from the movie file: False
    embedding = np.zeros((len(raw_items), content_dim), np.float32)
    embedding[found, :num_genres] = l2_normalise_rows(movies.genres[row[found]])
    attributes = {"genre": np.where(found, movies.first_genre[row], num_genres).astype(np.int64)}
    cardinality = {"genre": num_genres + 1}
    year = np.where(found, movies.year[row], -1)
    if (year >= 0).any():
        decade = year // 10 * 10
        known = np.unique(decade[year >= 0])
        attributes["decade"] = np.where(year >= 0, np.searchsorted(known, decade), len(known)).astype(np.int64)
        cardinality["decade"] = len(known) + 1
    return ItemTable(content_embedding=embedding, attributes=attributes, attribute_cardinality=cardinality)
