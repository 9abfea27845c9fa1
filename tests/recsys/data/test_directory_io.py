"""Atomic directories with a meta.json: all or nothing on disk, damage reported with the fix."""

import json

import numpy as np
import pytest

from recsys.data.directory_io import atomic_directory, load_array, read_meta, write_meta
from recsys.errors import DataError


def write(path, rows, overwrite=False):
    with atomic_directory(path, overwrite) as staging:
        np.save(staging / "values.npy", np.arange(rows))
        write_meta(staging, {"format": "test-format", "version": 1, "rows": rows})


def test_written_directory_reads_back_and_leaves_no_staging(tmp_path):
    write(tmp_path / "d", 3)
    assert read_meta(tmp_path / "d", "test-format", 1, ("rows",))["rows"] == 3
    assert load_array(tmp_path / "d", "values.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_failed_write_leaves_the_old_directory_untouched(tmp_path):
    write(tmp_path / "d", 3)
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "d", overwrite=True) as staging:
            np.save(staging / "values.npy", np.arange(5))
            raise RuntimeError("crash mid-write")
    assert load_array(tmp_path / "d", "values.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_existing_directory_needs_overwrite(tmp_path):
    write(tmp_path / "d", 3)
    with pytest.raises(DataError, match="already exists; pass overwrite=True"):
        write(tmp_path / "d", 4)
    write(tmp_path / "d", 4, overwrite=True)
    assert read_meta(tmp_path / "d", "test-format", 1, ("rows",))["rows"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_damage_is_reported_with_the_fix(tmp_path):
    folder = tmp_path / "d"
    with pytest.raises(DataError, match="meta.json not found.*rebuild it"):
        read_meta(folder, "test-format", 1, (), fix="rebuild it")
    write(folder, 3)
    with pytest.raises(DataError, match="version 1 is not 'test-format' version 2; rebuild it with this version"):
        read_meta(folder, "test-format", 2, (), fix="rebuild it")
    with pytest.raises(DataError, match=r"lacks the field\(s\) \['columns'\]"):
        read_meta(folder, "test-format", 1, ("rows", "columns"))
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_meta(folder, "test-format", 1, ())
    with pytest.raises(DataError, match="missing.*incomplete"):
        load_array(folder, "other.npy")
    (folder / "values.npy").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="not a readable .npy file"):
        load_array(folder, "values.npy")
