"""Directories of data files written atomically, described by a ``meta.json``.

The event log (:mod:`recsys.data.log_io`), the lifelong store and the stored lifelong sequences
are each one directory: data files plus ``meta.json`` naming the format and its version. They are
written into a temporary sibling directory that is renamed into place when complete
(:func:`atomic_directory`), so a reader never sees a half-written one, and read back through
:func:`read_meta` and :func:`load_array`, which turn a missing or damaged file into a
:class:`~recsys.errors.DataError` naming it and the fix.

Example::

    with atomic_directory("runs/store", overwrite=True) as staging:
        np.save(staging / "values.npy", values)
        write_meta(staging, {"format": "my-format", "version": 1, "rows": len(values)})
    meta = read_meta(Path("runs/store"), "my-format", 1, required=("rows",))
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from recsys.errors import DataError

META = "meta.json"


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty staging directory beside ``path``; renames it to ``path`` on success.

    On an exception the staging directory is removed and ``path`` is untouched. An existing
    ``path`` is replaced only with ``overwrite`` (moved aside, the staging directory renamed in,
    then the old one deleted).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; pass overwrite=True or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_meta(folder: Path, meta: dict) -> None:
    """Writes ``folder/meta.json`` (inside a staging directory of :func:`atomic_directory`)."""
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(path: Path, format_name: str, version: int, required: tuple[str, ...],
              fix: str = "write the directory again") -> dict:
    """``path/meta.json`` checked for format, version and ``required`` keys, else :class:`DataError`.

    Args:
        path: the directory.
        format_name / version: what ``meta.json`` must name.
        required: keys it must hold.
        fix: what the user should do about a damaged or outdated directory (ends every message).
    """
    meta_path = path / META
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found; {path} is not a {format_name} directory ({fix})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}; {fix}")
    if meta.get("format") != format_name or meta.get("version") != version:
        raise DataError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r} is not "
                        f"{format_name!r} version {version}; {fix} with this version")
    missing = [key for key in required if key not in meta]
    if missing:
        raise DataError(f"{meta_path} lacks the field(s) {missing}; {fix}")
    return meta


def load_array(path: Path, name: str, mmap: bool = True) -> np.ndarray:
    """``path/name`` as a (memory-mapped) array, or :class:`DataError` naming the file."""
    file = path / name
    if not file.is_file():
        raise DataError(f"{file} is missing; the directory {path} is incomplete, write it again")
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{file} is not a readable .npy file ({exc}); write the directory again") from None
