"""The MIMN paper-protocol benchmark: its configs, summaries, paired differences and one real resumable run."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from recsys.config import load_config
from recsys.models import model_config
from recsys.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mimn_paper_eval", ROOT / "benchmarks" / "mimn_paper_eval.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("suite", bench.SUITES)
def test_every_model_of_a_suite_trains_on_the_same_data_and_protocol(suite):
    configs = {m: load_config(TrainConfig, bench.config_path(m, suite), bench.seed_overrides(suite, 2)) for m in bench.MODELS}
    first = configs["mimn"]
    for model, cfg in configs.items():
        assert cfg.model_name == model and cfg.train.seed == 2
        assert cfg.data == first.data and cfg.train == first.train and cfg.optim == first.optim
        assert cfg.data.protocol == "last_behavior" and cfg.model["heads"] == first.model["heads"]
        model_config(cfg.model_name, **cfg.model_overrides)
    if suite == "synthetic":
        assert first.data.synthetic.seed == 2 and first.data.max_sequence == 1000


def fake_runs(aucs: dict[str, list[float]]) -> list[dict]:
    return [{"model": m, "seed": s, "auc": v, "popularity_auc": 0.5 + 0.01 * s} for m, vs in aucs.items()
            for s, v in enumerate(vs)]


def test_summary_pairs_and_the_paper_order():
    runs = fake_runs({"mimn": [0.80, 0.82, 0.81], "din": [0.70, 0.73, 0.71], "emb_mlp": [0.60, 0.61, 0.65]})
    runs.append({"model": "gru4rec", "seed": 0, "auc": None, "popularity_auc": None})  # failed run
    summary = bench.summarise(runs)
    assert set(summary) == {"mimn", "din", "emb_mlp", "popularity"} and summary["mimn"]["seeds"] == 3
    assert summary["mimn"]["auc"][0] == pytest.approx(0.81) and summary["popularity"]["auc"][0] == pytest.approx(0.51)
    pairs = bench.summarise_pairs(runs)
    assert set(pairs) == {"MIMN - DIN", "DIN - Emb&MLP", "MIMN - Emb&MLP"}
    diffs = [0.10, 0.09, 0.10]
    assert pairs["MIMN - DIN"]["auc"][0] == pytest.approx(sum(diffs) / 3)
    assert pairs["MIMN - DIN"]["auc"][1] == pytest.approx(bench.mean_and_interval(diffs)[1])
    assert bench.paper_order_holds(pairs) is True
    reversed_order = bench.summarise_pairs(fake_runs({"mimn": [0.7, 0.71, 0.69], "din": [0.8, 0.82, 0.81],
                                                      "emb_mlp": [0.6, 0.6, 0.61]}))
    assert bench.paper_order_holds(reversed_order) is False
    assert bench.paper_order_holds(bench.summarise_pairs(fake_runs({"mimn": [0.8], "din": [0.7], "emb_mlp": [0.6]}))) is None
    assert "MIMN - DIN" in bench.format_table(pairs, signed=True) and "+0.0967" in bench.format_table(pairs, signed=True)


def test_device_selection_hides_or_spreads_the_gpus():
    assert bench.run_environment("cpu", 2, 0, 1)["CUDA_VISIBLE_DEVICES"] == ""
    assert bench.run_environment("cuda", 4, 5, 4)["CUDA_VISIBLE_DEVICES"] == "1"
    assert bench.run_environment("auto", 1, 0, 1).get("CUDA_VISIBLE_DEVICES") == __import__("os").environ.get("CUDA_VISIBLE_DEVICES")


TINY = ["data.synthetic.num_users=40", "data.synthetic.num_items=300", "data.synthetic.mean_events_per_user=120",
        "data.max_sequence=30", "data.last_behavior.min_sequence=3", "data.num_workers=0", "train.epochs=1",
        "train.baseline=true"]


def test_a_real_run_writes_the_report_and_resume_reads_it(tmp_path):
    out = tmp_path / "report.json"
    report = bench.main(["--suite", "synthetic", "--models", "emb_mlp", "--seeds", "0", "1", "--device", "cpu",
                         "--out", str(out), *TINY])
    assert [r["exit_code"] for r in report["runs"]] == [0, 0]
    aucs = [r["auc"] for r in report["runs"]]
    assert all(0.0 < a < 1.0 for a in aucs) and report["summary"]["emb_mlp"]["seeds"] == 2
    assert not math.isnan(report["summary"]["emb_mlp"]["auc"][1]) and "popularity" in report["summary"]
    assert json.loads(out.read_text())["summary"]["emb_mlp"]["seeds"] == 2 and out.with_suffix(".png").is_file()
    again = bench.main(["--suite", "synthetic", "--models", "emb_mlp", "--seeds", "0", "1", "--device", "cpu",
                        "--resume", "--out", str(out), *TINY])
    assert [r["auc"] for r in again["runs"]] == aucs and all(r["wall_seconds"] < 5 for r in again["runs"])
