"""Every benchmark script turns its JSON report into the figure beside it: tested on small fake
reports (the benchmarks themselves are not run)."""

import importlib.util
import math
import sys
from pathlib import Path

import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark_plots", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).std() > 0.01


@pytest.fixture
def captured(monkeypatch):
    """Replaces a module's plotting call to record what it would draw (then draws it for real)."""
    calls = []

    def capture(module, name):
        real = getattr(module, name)

        def record(data, path, *args, **kwargs):
            calls.append(data)
            return real(data, path, *args, **kwargs)

        monkeypatch.setattr(module, name, record)
        return calls

    return capture


def test_hstu_attention_throughput_vs_length(tmp_path, captured):
    bench = load("hstu_attention")
    calls = captured(bench, "line_plot")
    rows = [{"provider": p, "pass": "fwd", "bias": b, "longest": n, "tflops": t} for p, b, n, t in
            [("pytorch", "both", 256, 1.0), ("pytorch", "both", 1024, 9.0), ("triton", "none", 256, 0.1),
             ("triton", "none", 1024, 0.5)]]
    rows.append({"provider": "pytorch", "pass": "fwd", "bias": "both", "longest": 4096, "skipped": "too big"})
    assert_png(bench.plot({"device": "H100", "matmul_tflops": 790.0, "rows": rows}, tmp_path / "h.png"))
    assert calls == [{"pytorch fwd bias: both": [(256, 1.0), (1024, 9.0)], "triton fwd": [(256, 0.1), (1024, 0.5)]}]


def test_nn_select_latency_vs_work(tmp_path, captured):
    bench = load("nn_select")
    calls = captured(bench, "line_plot")
    rows = [dict(backend="pytorch", k=96, requests=2, candidates_per_request=3, length=n, ms=n / 1e3,
                 target_ms=0.5 if n == 1000 else None) for n in (10000, 1000)]
    assert_png(bench.plot({"device": "cpu", "rows": rows}, tmp_path / "n.png"))
    assert calls == [{"pytorch k=96": [(6000, 1.0), (60000, 10.0)], "target": [(6000, 0.5)]}]


def test_train_throughput_vs_batch(tmp_path, captured):
    bench = load("train_throughput")
    calls = captured(bench, "line_plot")
    reports = [{"config": "configs/dlrm/synthetic.yaml", "world_size": 2, "device_type": "cpu", "batch_per_rank": b,
                "loader": {"examples_per_s": 100.0 * b}, "in_memory": {"examples_per_s": 150.0 * b}} for b in (512, 1024)]
    assert_png(bench.plot(reports, tmp_path / "t.png"))
    assert calls[0]["synthetic, 2 x cpu, loader"] == [(512, 51200.0), (1024, 102400.0)]
    assert calls[0]["synthetic, 2 x cpu, in_memory"] == [(512, 76800.0), (1024, 153600.0)]


def test_dlrm_vs_popularity_bars(tmp_path, captured):
    bench = load("dlrm_vs_popularity")
    calls = captured(bench, "grouped_bars")
    rows = [{"config": "configs/dlrm/ml100k.yaml", "head": "click", "model_auc_mean": 0.75, "model_auc_std": 0.01,
             "popularity_auc_mean": 0.68, "popularity_auc_std": 0.0}]
    assert_png(bench.plot(rows, tmp_path / "d.png"))
    assert calls == [{"ml100k click": {"DLRM": (0.75, 0.01), "popularity": (0.68, 0.0)}}]


def test_retrieval_runs_bars(tmp_path, captured):
    bench = load("retrieval_runs")
    calls = captured(bench, "grouped_bars")
    rows = [{"config": c, **{m: (v, 0.001) for m in bench.METRICS}} for c, v in (("hstu", 0.05), ("sasrec", 0.04))]
    assert_png(bench.plot(rows, tmp_path / "r.png"))
    assert list(calls[0]) == list(bench.METRICS) and calls[0]["ndcg@10"] == {"hstu": (0.05, 0.001), "sasrec": (0.04, 0.001)}


def test_transact_ablation_bars_one_png_per_metric(tmp_path, captured):
    bench = load("transact_ablation")
    calls = captured(bench, "grouped_bars")
    rows = [{"row": r, "seeds": 3, "hit@3 click": (v, 0.01), "hit@3 hide": (v / 2, math.nan),
             "auc click": (0.6 + v, 0.01), "auc hide": (0.6, 0.02)} for r, v in (("no sequence", 0.30), ("transact v1", 0.35))]
    paths = bench.plot(rows, tmp_path / "ablation.json")
    assert paths == [tmp_path / "ablation.png", tmp_path / "ablation_auc.png"]
    for path in paths:
        assert_png(path)
    assert calls[0]["click"] == {"no sequence": (0.30, 0.01), "transact v1": (0.35, 0.01)}
    assert set(calls[1]) == {"click", "hide"}


def test_serve_load_latency_vs_offered_load_with_soak_and_overload(tmp_path, captured):
    bench = load("serve_load")
    calls = captured(bench, "line_plot")
    step = lambda qps, p50, p99: {"offered_qps": qps, "p50_ms": p50, "p99_ms": p99}  # noqa: E731
    report = {"candidates": 500, "machine": "2-core CPU", "sweep": [step(10, 8.0, 20.0), step(50, 9.0, 28.0)],
              "soak": step(40, 9.5, 25.0), "overload": step(150, 60.0, 120.0)}
    assert_png(bench.plot(report, tmp_path / "s.png"))
    assert calls == [{"p50": [(10, 8.0), (50, 9.0)], "p99": [(10, 20.0), (50, 28.0)], "soak p99": [(40, 25.0)],
                      "overload p99": [(150, 120.0)]}]
    # The server's own quantile over a step: the bucket bound holding it, from two scrapes of the histogram.
    before, after = {0.01: 5, 0.03: 5, float("inf"): 5}, {0.01: 55, 0.03: 104, float("inf"): 105}
    assert bench.histogram_quantile_le_ms(before, after, 0.5) == 10.0
    assert bench.histogram_quantile_le_ms(before, after, 0.99) == 30.0
    assert bench.histogram_quantile_le_ms(after, after, 0.99) is None


def test_serve_stages_one_bar_per_stage(tmp_path, captured):
    bench = load("serve_stages")
    calls = captured(bench, "grouped_bars")
    report = {"model": "dlrm", "candidates": 500, "machine": "", "stages_ms": {"features": 0.3, "forward": 4.2}}
    assert_png(bench.plot(report, tmp_path / "st.png"))
    assert calls == [{"features": {"median ms": (0.3, pytest.approx(float("nan"), nan_ok=True))},
                      "forward": {"median ms": (4.2, pytest.approx(float("nan"), nan_ok=True))}}]


def test_serve_load_mix_draws_sizes_in_the_range_and_counts_them(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    import recsys.data.features as features
    import recsys.inference as inference

    bench = load("serve_load")
    monkeypatch.setattr(inference, "_locate", lambda path, step: (tmp_path, None))
    monkeypatch.setattr(features, "load_feature_spec", lambda path: SimpleNamespace(num_users=50, num_items=1000))
    mix = bench.request_mix("run", [100, 700], seed=0, count=200)
    sizes = [size for _, size in mix]
    assert min(sizes) >= 100 and max(sizes) <= 700 and len(set(sizes)) > 50
    for body, size in mix[:20]:
        items = json.loads(body)["candidates"]
        assert len(items) == size == len(set(items))
    assert {size for _, size in bench.request_mix("run", [500], seed=0, count=10)} == {500}
    assert bench._candidates_label([100, 700]) == "100-700 candidates" and bench._candidates_label(500) == "500 candidates"
