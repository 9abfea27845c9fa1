"""Files written atomically: into a temp file beside the target, then renamed into place.

A reader (or a run that is killed halfway) never sees a half-written file; on an error the temp
file is removed and the target is untouched. The temp file is flushed to disk (``fsync``) before
the rename and the folder after it, so a host crash cannot leave the new name on empty contents. Directories of several files use
:func:`recsys.data.directory_io.atomic_directory` instead.

Example::

    write_json_atomic("runs/x/results.json", {"auc": 0.71})
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Runs ``write(temp_path)`` on a temp file beside ``path``, then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)
        fsync_file(temp)
        os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def fsync_file(path: str | Path) -> None:
    """Flushes a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flushes a folder's entries (names created, renamed or removed in it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open folders (Windows): nothing to flush
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Flushes every file and folder under ``path`` (and ``path`` itself) to disk."""
    path = Path(path)
    for entry in sorted(path.rglob("*"), reverse=True):  # children before their folders
        if entry.is_file():
            fsync_file(entry)
        elif entry.is_dir():
            fsync_dir(entry)
    fsync_dir(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8), atomically."""
    return write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, value: object, sort_keys: bool = False) -> Path:
    """Writes ``value`` as indented JSON, atomically; values JSON lacks (paths, ...) as strings."""
    return write_text_atomic(path, json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n")
