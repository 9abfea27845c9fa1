"""The HSTU serving benchmark end to end at a tiny size: every mode runs through the app and the
engine, and the cache does what each mode says (cold: misses, warm: hits, append: appends)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("hstu_serving", ROOT / "benchmarks" / "hstu_serving.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_writes_json_and_png_and_each_mode_hits_the_cache_as_named(tmp_path):
    out = tmp_path / "hstu_serving.json"
    report = bench.main(["--history-events", "12", "--candidates", "6", "--microbatch", "4", "--layers", "1",
                         "--dim", "8", "--heads", "2", "--head-dim", "4", "--page-size", "8", "--repeats", "3",
                         "--warmup", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report and out.with_suffix(".png").is_file()
    assert set(report["modes"]) == {"cold", "warm", "append", "off"} and report["history_tokens"] == 24
    runs = 2 * (1 + 3)  # engine and /rank, warm-up included
    lookups = {mode: row["lookups"] for mode, row in report["modes"].items()}
    assert lookups["cold"] == {"hit": 0, "append": 0, "miss": runs}
    assert lookups["warm"] == {"hit": runs - 1, "append": 0, "miss": 1}  # the cache is cleared before /rank
    assert lookups["append"] == {"hit": 1, "append": runs - 2, "miss": 1}
    assert lookups["off"] == {"hit": 0, "append": 0, "miss": 0}
    assert report["max_abs_diff_vs_off"]["append"] < 1e-6 and report["max_abs_diff_vs_off"]["hit"] < 1e-6
    for row in report["modes"].values():
        for path in ("engine", "rank"):
            assert row[path]["n"] == 3 and 0 < row[path]["p50_ms"] <= row[path]["p99_ms"]
