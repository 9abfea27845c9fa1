"""The ranking recipe end to end with TransAct V2 on lifelong batches: S_all is built once under the
run's folder, training runs with the next-action loss, and every head reports AUC, NE and HIT@3."""

import json
import math

from recsys.config import load_config
from recsys.train.config import TrainConfig
from recsys.train.ranking import format_metrics_table, run_training

TINY = [
    "data.synthetic.num_users=150",
    "data.synthetic.num_items=200",
    "data.synthetic.mean_events_per_user=60",
    "data.synthetic.heavy_user_fraction=0.05",
    "data.synthetic.heavy_user_events=500",
    "data.synthetic.days=60",
    "data.num_workers=0",
    "data.lifelong.lifelong_k=16",
    "data.lifelong.realtime_recent=8",
    "data.lifelong.realtime_k=4",
    "data.lifelong.impression_k=4",
    "model.embedding_dim=8",
    "model.dense_arch_layers=[16, 8]",
    "model.cross_layers=1",
    "model.over_arch_layers=[16]",
    "model.transact_v2.max_sequence=32",
    "model.transact_v2.model_dim=16",
    "model.transact_v2.feedforward_dim=16",
    "train.batch_size=256",
    "train.epochs=2",
    "optim.dense.lr=0.005",
    "train.progress=false",
    "train.baseline=false",
]


def test_transact_v2_trains_on_lifelong_batches(tmp_path):
    cfg = load_config(TrainConfig, "configs/transact/transact_v2_synthetic.yaml", [*TINY, f"output_dir={tmp_path}"])
    results = run_training(cfg)
    test = results["transact_v2 test"]
    for head in ("click", "save", "hide", "long_view"):
        assert 0.0 <= test[head]["hit@3"] <= 1.0 and test[head]["requests"] > 0, test[head]
        assert not math.isnan(test[head]["auc"])
    assert test["click"]["auc"] > 0.55, test["click"]
    assert results["oracle test"]["hide"]["hit@3"] < 0.5  # the generator's own hide probabilities keep hides low
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["transact_v2 test"]["click"]["hit@3"] == test["click"]["hit@3"]
    cached = sorted(p.name for p in next((tmp_path / "lifelong").glob("*/")).iterdir())
    assert [name.split("-")[0] for name in cached] == ["store", "test", "train", "valid"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("valid/click/hit@3" in r for r in records)
    table = format_metrics_table("transact_v2", {k: v for k, v in results.items() if k.endswith("test")})
    assert "HIT@3" in table and "hide LOWER" in table
