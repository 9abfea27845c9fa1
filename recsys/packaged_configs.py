"""The YAML configs installed with the package (``configs/`` of the source tree, as ``recsys.configs``).

``recsys train --config configs/dlrm/synthetic.yaml`` reads the file under the working directory
when it exists there, else the installed copy, so the README's commands work outside a checkout.
``recsys configs`` lists them.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

PREFIX = "configs/"


def configs_dir() -> Path:
    """The folder of the installed configs."""
    import recsys.configs

    return Path(recsys.configs.__file__).parent


def list_configs(pattern: str = "*") -> list[tuple[str, str]]:
    """``(configs/<name>.yaml, description)`` of the installed configs whose path matches ``pattern``.

    The description is the YAML's second line (the first is the command that runs it).
    """
    root = configs_dir()
    found = []
    for path in sorted(root.rglob("*.yaml")):
        name = PREFIX + path.relative_to(root).as_posix()
        if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name[len(PREFIX):], pattern):
            lines = path.read_text(encoding="utf-8").splitlines()
            found.append((name, lines[1].lstrip("# ").strip() if len(lines) > 1 else ""))
    return found


def resolve_config(path: str | Path) -> Path:
    """``path`` when it exists, else the installed config of that name (``configs/...`` or ``dlrm/...``)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    name = path.as_posix()
    packaged = configs_dir() / (name[len(PREFIX):] if name.startswith(PREFIX) else name)
    return packaged if packaged.is_file() else path
