"""Fetches public data sets into a folder, checks them and moves them into place atomically.

MovieLens: ``fetch_movielens("ml-1m", root)`` returns ``root/ml-1m``. When that folder already
holds the variant's ratings file nothing is downloaded. Otherwise the zip and its published
``.md5`` are downloaded, the checksum compared, and the archive extracted into a temporary folder
under ``root`` that is renamed to ``root/<name>`` only once complete.

Amazon ratings-only files: ``fetch_amazon_ratings("data/amzn-books/ratings_Books.csv")`` downloads
SNAP's ``ratings_Books.csv`` (the file HSTU's public preprocessing of Amazon Books starts from)
when the path does not exist yet. SNAP publishes no checksum, so the download is accepted when
its size equals the length the server announced (if it announced one) and its first line reads
``user,item,rating,timestamp``; the reader then checks every line. It is written to a temporary
file next to the target and renamed once accepted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from recsys.errors import ConfigError, DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens"
SNAP_AMAZON_URL = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
RATINGS_FILE = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-20m": "ratings.csv",
    "ml-latest-small": "ratings.csv",
    "ml-latest": "ratings.csv",
}
TIMEOUT_S = 60
_CHUNK = 1 << 20
_AMAZON_RATINGS_NAME = re.compile(r"ratings_[A-Za-z_]+\.csv")
_AMAZON_RATINGS_LINE = re.compile(r"[^,\s]+,[^,\s]+,\d+(\.\d+)?,\d+")


def fetch_movielens(name: str, root: str | Path, url: str | None = None) -> Path:
    """Returns the folder ``root/<name>`` holding MovieLens ``name``, downloading it if needed.

    Args:
        name: one of ``RATINGS_FILE``'s keys ("ml-100k", "ml-1m", "ml-20m", ...).
        root: folder that holds (or will hold) ``<name>/``.
        url: the zip's address; its checksum is read from ``url + ".md5"``. Defaults to
            GroupLens: ``{BASE_URL}/<name>.zip``.
    """
    if name not in RATINGS_FILE:
        raise ConfigError(f"unknown MovieLens set {name!r}; choose one of {list(RATINGS_FILE)}")
    target = Path(root) / name
    if (target / RATINGS_FILE[name]).is_file():
        return target
    url = url or f"{BASE_URL}/{name}.zip"
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        expected = _published_md5(url, name, target)
        archive = staging / f"{name}.zip"
        actual = _download(url, archive, name, target)
        if actual != expected:
            raise DataError(f"{url}: MD5 {actual} does not match the published {expected}; the download is "
                            f"corrupt: retry, or download and unzip {name}.zip by hand into {target}")
        _extract(archive, staging / "unpacked", name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fetch_failed(name: str, target: Path, url: str, exc: Exception) -> DataError:
    return DataError(f"could not download {url} ({exc}); without network access, download {name}.zip from "
                     f"{BASE_URL} by hand and unzip it so that {target / RATINGS_FILE[name]} exists")


def _published_md5(url: str, name: str, target: Path) -> str:
    md5_url = url + ".md5"
    try:
        with urllib.request.urlopen(md5_url, timeout=TIMEOUT_S) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise _fetch_failed(name, target, md5_url, exc) from None
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if found is None:
        raise DataError(f"{md5_url} holds no MD5 checksum ({text[:80]!r}); download {name}.zip by hand into {target}")
    return found.group(0).lower()


def _download(url: str, dest: Path, name: str, target: Path) -> str:
    """Streams ``url`` into ``dest``; returns the hex MD5 of the bytes."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise _fetch_failed(name, target, url, exc) from None
    return digest.hexdigest()


def _extract(archive: Path, unpacked: Path, name: str, target: Path) -> None:
    """Unzips ``archive`` and renames the folder holding the ratings file to ``target``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)  # zipfile drops absolute paths and ".." components
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{archive.name} is not a valid zip ({exc}); download {name}.zip by hand into {target}"
        ) from None
    found = sorted(unpacked.rglob(RATINGS_FILE[name]))
    if not found:
        raise DataError(f"{archive.name} holds no {RATINGS_FILE[name]}; download {name}.zip by hand into {target}")
    if target.exists():
        shutil.rmtree(target)  # an incomplete earlier copy without the ratings file
    os.replace(found[0].parent, target)


def fetch_amazon_ratings(path: str | Path, url: str | None = None) -> Path:
    """Returns ``path``, an Amazon ratings-only CSV, downloading it from SNAP if it does not exist.

    Args:
        path: where the file lives (or will), named as SNAP names it: ``ratings_<Category>.csv``
            (e.g. ``data/amzn-books/ratings_Books.csv``).
        url: the file's address. Defaults to SNAP: ``{SNAP_AMAZON_URL}/<file name>``.
    """
    path = Path(path)
    if path.is_file():
        return path
    if url is None:
        if not _AMAZON_RATINGS_NAME.fullmatch(path.name):
            raise ConfigError(f"{path.name} is not the name of an Amazon ratings-only file; name the path "
                              f"ratings_<Category>.csv (e.g. data/amzn-books/ratings_Books.csv) or pass url")
        url = f"{SNAP_AMAZON_URL}/{path.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    staging = Path(staging)
    by_hand = f"download {url} by hand to {path}"
    try:
        received, announced = _download_counted(url, staging, by_hand)
        if announced is not None and received != announced:
            raise DataError(f"{url}: received {received} bytes of the announced {announced}; the download is "
                            f"incomplete: retry, or {by_hand}")
        _check_ratings_line(staging, url, by_hand)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _download_counted(url: str, dest: Path, by_hand: str) -> tuple[int, int | None]:
    """Streams ``url`` into ``dest``; returns (bytes received, Content-Length or None)."""
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            announced = int(length) if length is not None and length.isdigit() else None
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DataError(f"could not download {url} ({exc}); without network access, {by_hand}") from None
    return received, announced


def _check_ratings_line(path: Path, url: str, by_hand: str) -> None:
    """Raises unless the first line of ``path`` reads ``user,item,rating,timestamp``."""
    with open(path, "rb") as f:
        first = f.readline(4096).decode("utf-8", errors="replace").rstrip("\r\n")
    if not _AMAZON_RATINGS_LINE.fullmatch(first):
        raise DataError(f"{url} is not an Amazon ratings-only file: its first line is {first[:80]!r}, not "
                        f"user,item,rating,timestamp; check the address, or {by_hand}")
