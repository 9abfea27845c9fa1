"""Atomic file writes: the target appears whole or not at all, and no temp file is left beside it."""

import json
from pathlib import Path

import pytest

from recsys.atomic_files import write_atomic, write_json_atomic, write_text_atomic


def test_json_is_written_whole_with_paths_as_strings(tmp_path):
    out = write_json_atomic(tmp_path / "sub" / "r.json", {"b": 1, "a": Path("/x")})
    assert json.loads(out.read_text()) == {"b": 1, "a": "/x"}
    assert list(json.loads(out.read_text())) == ["b", "a"]  # order kept unless asked to sort
    write_json_atomic(out, {"b": 1, "a": 2}, sort_keys=True)
    assert list(json.loads(out.read_text())) == ["a", "b"]
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = write_text_atomic(tmp_path / "latest", "step-5\n")

    def broken(temp: Path) -> None:
        temp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_text() == "step-5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]
