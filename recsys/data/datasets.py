"""Named public data sets fetched into a cache folder, checksum-verified: ``recsys data fetch NAME``.

=================  =========================================================  ===========================
name               what                                                       check
=================  =========================================================  ===========================
``amazon-beauty``  S3-Rec's Amazon Beauty (``Beauty.txt`` + item attributes)  SHA-256 pinned here
``amazon-sports``  S3-Rec's Amazon Sports_and_Outdoors                         SHA-256 pinned here
``ml-100k``        MovieLens 100K from GroupLens                              GroupLens' published MD5 (zip);
                                                                              SHA-256 of the files pinned here
``ml-latest-small`` MovieLens latest-small (the 2018 release: 100,836 ratings) GroupLens' published MD5 (zip);
                                                                              SHA-256 of ``ratings.csv`` pinned here
``ml-1m``          MovieLens 1M                                               GroupLens' published MD5
``ml-20m``         MovieLens 20M                                              GroupLens' published MD5
=================  =========================================================  ===========================

The cache folder is ``$RECSYS_DATA`` when set, else ``~/.cache/recsys-zoo/data``; a set lives in
``<cache>/<name>/`` and is fetched once (a second fetch finds it and downloads nothing). Every file
is downloaded next to its target and renamed into place only once its checksum matches.

Without network access a local copy of the files is taken instead (``recsys data fetch NAME --from
DIR``, :func:`copy_dataset`): every file is checked against the SHA-256 pinned here (GroupLens'
MD5 covers only the zip, so the files of ``ml-100k`` that the reader uses are pinned too; ``ml-1m``
and ``ml-20m`` have no pinned files and are only downloaded).

Example::

    folder = fetch_dataset("amazon-beauty")   # <cache>/amazon-beauty/Beauty.txt, ...
    folder = fetch_dataset("ml-100k", source="../shared/data/ml-100k")   # a verified local copy
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from recsys.data.download import BASE_URL as MOVIELENS_URL
from recsys.data.download import TIMEOUT_S, fetch_movielens
from recsys.errors import ConfigError, DataError

S3REC_URL = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data"
CACHE_ENV = "RECSYS_DATA"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class S3RecSet:
    """Files of one S3-Rec Amazon set: file name -> SHA-256 of the published file."""

    files: dict[str, str]


DATASETS: dict[str, S3RecSet | str] = {
    "amazon-beauty": S3RecSet({
        "Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        "Beauty_item2attributes.json": "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
    }),
    "amazon-sports": S3RecSet({
        "Sports_and_Outdoors.txt": "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
        "Sports_and_Outdoors_item2attributes.json": "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b",
    }),
    "ml-100k": "movielens",
    "ml-latest-small": "movielens",
    "ml-1m": "movielens",
    "ml-20m": "movielens",
}

MOVIELENS_FILES: dict[str, dict[str, str]] = {
    # SHA-256 of the files of GroupLens' ml-100k.zip: the ratings and movies the reader reads, and the users.
    "ml-100k": {
        "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    },
    # The ratings of ml-latest-small.zip's 2018 release (610 users, 9,724 movies, 100,836 ratings), all
    # the reader needs (movies.csv, when present, only names the movies). GroupLens regenerates this
    # set now and then: a later release has other bytes and needs its own pin.
    "ml-latest-small": {
        "ratings.csv": "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8",
    },
}


def data_home() -> Path:
    """The cache folder: ``$RECSYS_DATA``, else ``~/.cache/recsys-zoo/data``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "recsys-zoo" / "data")


def fetch_dataset(
    name: str, root: str | Path | None = None, base_url: str | None = None, source: str | Path | None = None
) -> Path:
    """Returns ``<root>/<name>/`` holding data set ``name``, downloading (or copying) what is missing.

    Args:
        name: a key of :data:`DATASETS`.
        root: the cache folder; None = :func:`data_home`.
        base_url: where the files are (``<base_url>/<file>``; MovieLens: ``<base_url>/<name>.zip``
            and its ``.md5``); None = the original source. ``file://`` addresses work too.
        source: a local folder holding the set's files to copy instead of downloading
            (:func:`copy_dataset`); excludes ``base_url``.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    if source is not None:
        if base_url is not None:
            raise ConfigError("give either a local folder to copy (--from) or an address to download from (--url), not both")
        return copy_dataset(name, source, root)
    root = Path(root) if root is not None else data_home()
    entry = DATASETS[name]
    if entry == "movielens":
        return fetch_movielens(name, root, url=f"{base_url or MOVIELENS_URL}/{name}.zip")
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    for file_name, sha256 in entry.files.items():
        if not (target / file_name).is_file():
            _fetch_file(f"{base_url or S3REC_URL}/{file_name}", target / file_name, sha256)
    return target


def _fetch_file(url: str, path: Path, sha256: str) -> None:
    """Downloads ``url`` beside ``path`` and renames it into place once its SHA-256 is ``sha256``."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    staging = Path(staging)
    by_hand = f"download {url} by hand to {path}"
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                raise DataError(f"could not download {url} ({exc}); without network access, {by_hand}") from None
        if digest.hexdigest() != sha256:
            raise DataError(f"{url}: SHA-256 {digest.hexdigest()} is not the expected {sha256}; the download is "
                            f"corrupt or the file changed upstream: retry, or {by_hand} and check it")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def pinned_files(name: str) -> dict[str, str]:
    """File name -> pinned SHA-256 of the files a local copy of ``name`` must hold."""
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    entry = DATASETS[name]
    if isinstance(entry, S3RecSet):
        return entry.files
    if name not in MOVIELENS_FILES:
        raise ConfigError(f"{name} has no pinned file checksums, so a local copy cannot be verified; fetch it "
                          f"without --from (GroupLens' MD5-checked zip), or point data.path at the unzipped folder")
    return MOVIELENS_FILES[name]


def copy_dataset(name: str, source: str | Path, root: str | Path | None = None) -> Path:
    """Copies data set ``name`` from the local folder ``source`` into ``<root>/<name>/``; returns that folder.

    Every file of :func:`pinned_files` is copied into a temporary folder beside the target and
    checked against its SHA-256; only when all match are they renamed into place, so a missing or
    altered file leaves the cache as it was. When the target already holds every file nothing is copied.

    Args:
        name: a key of :data:`DATASETS` with pinned files (``ml-1m``/``ml-20m`` have none).
        source: folder holding the set's files as published (``Beauty.txt``, ...; ``u.data``, ...).
        root: the cache folder; None = :func:`data_home`.
    """
    files = pinned_files(name)
    source = Path(source)
    target = (Path(root) if root is not None else data_home()) / name
    if all((target / file_name).is_file() for file_name in files):
        return target
    if not source.is_dir():
        raise DataError(f"--from {source} is not a folder; give the folder holding {name}'s files {sorted(files)}")
    missing = sorted(file_name for file_name in files if not (source / file_name).is_file())
    if missing:
        raise DataError(f"{source} lacks {', '.join(missing)} of {name}; give the folder holding all of {sorted(files)} "
                        f"(MovieLens: the unzipped GroupLens folder)")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target))
    try:
        for file_name, sha256 in files.items():
            actual = _copy_hashed(source / file_name, staging / file_name)
            if actual != sha256:
                raise DataError(f"{source / file_name}: SHA-256 {actual} is not the expected {sha256}; the file is "
                                f"not {name}'s published {file_name} (altered or truncated): replace it with the original")
        for file_name in files:
            os.replace(staging / file_name, target / file_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_hashed(source: Path, dest: Path) -> str:
    """Copies ``source`` to ``dest`` (flushed to disk); returns the hex SHA-256 of the bytes."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


DATASET_SCHEME = "dataset:"
"""``data.path: dataset:<name>[/<file>]`` reads ``<cache>/<name>[/<file>]`` (with ``data.download=true``
the set is fetched first), so a config names a data set rather than a folder of one checkout."""


def dataset_path(path: str, fetch: bool = False) -> Path:
    """``dataset:ml-1m`` -> ``<cache>/ml-1m``; ``dataset:amazon-beauty/Beauty.txt`` -> ``<cache>/amazon-beauty/Beauty.txt``.

    Args:
        path: a ``data.path`` starting with :data:`DATASET_SCHEME`.
        fetch: download the set first when it is not in the cache yet.
    """
    name, _, rest = path.removeprefix(DATASET_SCHEME).partition("/")
    if name not in DATASETS:
        raise ConfigError(f"data.path={path!r} names no known data set; use dataset:<name> with a name of {sorted(DATASETS)}")
    folder = fetch_dataset(name) if fetch else data_home() / name
    resolved = folder / rest if rest else folder
    if not resolved.exists():
        raise DataError(f"{resolved} does not exist; fetch it with `recsys data fetch {name}` (or `--from DIR`, "
                        f"a local copy of its files) or set data.download=true")
    return resolved
