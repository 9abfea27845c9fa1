"""Files written atomically: into a temp file beside the target, then renamed into place.

A reader (or a run that is killed halfway) never sees a half-written file; on an error the temp
file is removed and the target is untouched. Directories of several files use
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
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8), atomically."""
    return write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, value: object, sort_keys: bool = False) -> Path:
    """Writes ``value`` as indented JSON, atomically; values JSON lacks (paths, ...) as strings."""
    return write_text_atomic(path, json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n")
