"""The UIC Redis benchmark on a tiny setting: every step runs on a throwaway server and reports a rate."""

import importlib.util
import sys
from pathlib import Path

from tests.recsys.uic.redis_server import require_redis

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mimn_uic_redis.py"
spec = importlib.util.spec_from_file_location("mimn_uic_redis_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["mimn_uic_redis_benchmark"] = bench
spec.loader.exec_module(bench)


def test_tiny_run_reports_every_step():
    require_redis()
    report = bench.run(None, records=50, state_bytes=4096, batch=20, events=120, fsync="always")
    steps = [r["step"] for r in report["rows"]]
    assert steps == ["store commit", "store read", "store snapshot", "stream publish", "stream consume"]
    for row in report["rows"]:
        assert row["items"] == (50 if row["step"].startswith("store") else 120)
        assert row["items_per_s"] == row["items"] / row["seconds"] > 0
    assert report["rows"][0]["mb_per_s"] == 50 * 4096 / 1e6 / report["rows"][0]["seconds"]
    assert "store commit" in bench.format_table(report["rows"])


def test_rates_plot_writes_a_png_beside_the_json(tmp_path):
    rows = [bench._row(step, 10, 0.5, None, "") for step in ("store commit", "stream publish")]
    report = dict(server="throwaway, appendfsync always", batch=20, rows=rows)
    png = bench.rates_plot(report, bench.png_beside(tmp_path / "uic.json"))
    assert png == tmp_path / "uic.png" and png.stat().st_size > 0
