"""Readers that turn real data sets into a validated :class:`~recsys.data.schema.EventLog`.

``read_events(source, path, **options)`` dispatches on the source:

- ``"movielens"``: a MovieLens folder (:func:`read_movielens`),
- ``"amazon"``: an S3-Rec Amazon sequence file (:func:`read_amazon_s3rec`),
- ``"amazon_ratings"``: an Amazon ratings-only CSV such as ``ratings_Books.csv``
  (:func:`read_amazon_ratings`),
- ``"events"``: a generic CSV/Parquet event table (:func:`read_event_table`),
- ``"log"``: a log directory written by :func:`recsys.data.log_io.write_log`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from recsys.data.log_io import read_log
from recsys.data.readers.amazon_ratings import read_amazon_ratings
from recsys.data.readers.amazon_s3rec import read_amazon_s3rec
from recsys.data.readers.event_table import ColumnMapping, read_event_table
from recsys.data.readers.movielens import read_movielens
from recsys.data.schema import EventLog
from recsys.errors import ConfigError

READERS = {
    "movielens": read_movielens,
    "amazon": read_amazon_s3rec,
    "amazon_ratings": read_amazon_ratings,
    "events": read_event_table,
    "log": read_log,
}

__all__ = [
    "READERS",
    "ColumnMapping",
    "read_amazon_ratings",
    "read_amazon_s3rec",
    "read_event_table",
    "read_events",
    "read_log",
    "read_movielens",
]


def read_events(source: str, path: str | Path, **options) -> EventLog:
    """Reads ``path`` with the reader of ``source`` (one of ``READERS``), passing ``options`` on."""
    if source not in READERS:
        raise ConfigError(f"unknown event source {source!r}; choose one of {list(READERS)}")
    reader = READERS[source]
    accepted = list(inspect.signature(reader).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"source {source!r} takes no option(s) {unknown}; its options are {accepted}")
    return reader(path, **options)
