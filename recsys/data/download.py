"""Fetches a MovieLens archive from GroupLens, checks its MD5 and unpacks it atomically.

``fetch_movielens("ml-1m", root)`` returns ``root/ml-1m``. When that folder already holds the
variant's ratings file nothing is downloaded. Otherwise the zip and its published ``.md5`` are
downloaded, the checksum compared, and the archive extracted into a temporary folder under
``root`` that is renamed to ``root/<name>`` only once complete.
"""

from __future__ import annotations

import hashlib
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
RATINGS_FILE = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-20m": "ratings.csv",
    "ml-latest-small": "ratings.csv",
    "ml-latest": "ratings.csv",
}
TIMEOUT_S = 60
_CHUNK = 1 << 20


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
