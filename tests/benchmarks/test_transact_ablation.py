"""The TransAct ablation script's pieces: t intervals, merged row configs that load, and the summary."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from recsys.config import load_config
from recsys.models import model_config
from recsys.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("transact_ablation", ROOT / "benchmarks" / "transact_ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def test_t_quantiles_and_intervals():
    assert ablation.t_quantile_975(2) == pytest.approx(4.303)
    assert ablation.t_quantile_975(40) == pytest.approx(2.021, abs=2e-3)  # tables: 2.021
    assert ablation.t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)  # tables: 1.980
    mean, half = ablation.mean_and_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    single = ablation.mean_and_interval([0.4])
    assert single[0] == 0.4 and math.isnan(single[1])


SUITE_ROWS = [(suite, row) for suite, (_, rows) in ablation.SUITES.items() for row in rows]


@pytest.mark.parametrize("suite, row", SUITE_ROWS, ids=[f"{suite}-{row[0]}" for suite, row in SUITE_ROWS])
def test_row_configs_take_the_model_of_the_row_and_the_data_of_the_suite(tmp_path, suite, row):
    name, config, overrides = row[0], row[1], ablation.row_overrides(row)
    base_config = ablation.SUITES[suite][0]
    path = ablation.row_config(name, config, tmp_path, base_config)
    cfg = load_config(TrainConfig, path, [*ablation.seed_overrides(1, tmp_path), *overrides])
    row = load_config(TrainConfig, ROOT / config, [o for o in overrides if o.startswith("model.")])
    base = load_config(TrainConfig, ROOT / base_config)
    assert cfg.model == row.model and cfg.train.seed == 1
    assert cfg.data.source == base.data.source and cfg.data.lifelong.enabled == base.data.lifelong.enabled
    if suite == "synthetic":
        assert cfg.data.lifelong.enabled and cfg.data.synthetic.seed == 1
        assert cfg.data.synthetic.num_users == base.data.synthetic.num_users
    else:
        assert cfg.data.negatives_per_target == base.data.negatives_per_target and cfg.data.max_sequence == base.data.max_sequence
    model_config(cfg.model_name, **cfg.model_overrides)


def test_summary_and_table():
    heads = {"click": {"hit@3": 0.5, "auc": 0.7}, "hide": {"hit@3": 0.2, "auc": 0.6}}
    runs = [{"row": "TransAct V2", "seed": s, "test": {h: {k: v + 0.01 * s for k, v in m.items()} for h, m in heads.items()}}
            for s in range(3)] + [{"row": "BST", "seed": 0, "test": None}]
    rows = ablation.summarise(runs)
    assert len(rows) == 1 and rows[0]["seeds"] == 3
    assert rows[0]["hit@3 click"][0] == pytest.approx(0.51) and rows[0]["auc hide"][0] == pytest.approx(0.61)
    table = ablation.format_table(rows, "hit@3")
    assert "TransAct V2" in table and "hit@3 click" in table and "auc" not in table


def test_paired_summary_takes_per_seed_differences_to_the_no_sequence_row():
    def run(row, seed, click):
        return {"row": row, "seed": seed, "test": {"click": {"hit@3": click, "auc": 0.5}}}

    # The worlds of the seeds differ by 0.1 each; TransAct V2 is 0.02 above no sequence on every seed.
    runs = [run("no sequence", s, 0.5 + 0.1 * s) for s in range(3)]
    runs += [run("TransAct V2", s, 0.52 + 0.1 * s) for s in range(3)] + [run("BST", 7, 0.9)]
    rows = ablation.summarise_paired(runs)
    assert [r["row"] for r in rows] == ["TransAct V2 - no sequence"]  # BST has no seed in common
    mean, half = rows[0]["hit@3 click"]
    assert mean == pytest.approx(0.02) and half == pytest.approx(0.0, abs=1e-12)
    unpaired = {r["row"]: r for r in ablation.summarise(runs)}["TransAct V2"]["hit@3 click"][1]
    assert unpaired > 0.2  # the spread of the worlds, which pairing removes
    assert "+0.0200" in ablation.format_table(rows, "hit@3")


def test_the_rows_separate_the_effects():
    """The TransAct V2 paper's ablation rows, each differing from its neighbour in one thing."""
    rows = {row[0]: row for row in ablation.ROWS}
    assert list(rows) == ["no sequence", "BST", "V1 (100)", "V1 + NAL in-batch", "V1 + NAL impressions",
                          "V2 without NAL", "V2 + NAL in-batch", "V2 + NAL impressions", "V2 without NN selection"]

    def loaded(name):
        row = rows[name]
        return load_config(TrainConfig, ROOT / row[1], ablation.row_overrides(row))

    v1 = loaded("V1 (100)").model_overrides
    assert model_config("transact_v1", **v1).transact_v1.max_sequence == 100
    for name in ("V1 + NAL in-batch", "V1 + NAL impressions"):
        assert model_config("transact_v1", **loaded(name).model_overrides).transact_v1.max_sequence == 100
    nal = {name: model_config("transact_v2", **loaded(name).model_overrides).next_action_loss
           for name in ("V2 without NAL", "V2 + NAL in-batch", "V2 + NAL impressions")}
    assert [n.enabled for n in nal.values()] == [False, True, True]
    assert nal["V2 + NAL in-batch"].negatives == "in_batch" and nal["V2 + NAL impressions"].negatives == "impressions"
    assert loaded("V2 without NN selection").data.lifelong.selection == "recent"
    assert loaded("V2 + NAL impressions").data.lifelong.selection == "nn"


SMOKE = [
    "data.synthetic.num_users=60",
    "data.synthetic.num_items=200",
    "data.synthetic.mean_events_per_user=40",
    "data.synthetic.heavy_user_fraction=0.05",
    "data.synthetic.heavy_user_events=300",
    "data.synthetic.days=30",
    "data.num_workers=0",
    "model.embedding_dim=8",
    "model.dense_arch_layers=[16, 8]",
    "model.cross_layers=1",
    "model.over_arch_layers=[16]",
    "train.batch_size=512",
    "train.eval_batch_size=4096",
    "train.baseline=false",
]


def test_every_row_runs_on_a_tiny_world(tmp_path, monkeypatch):
    """One seed of every row, end to end through the script (a tiny world: not a measurement)."""
    out = tmp_path / "ablation.json"
    monkeypatch.setattr("sys.argv", ["transact_ablation.py", "--seeds", "0", "--parallel", "2", "--out", str(out),
                                     *SMOKE])
    ablation.main()
    report = json.loads(out.read_text())
    assert [r["exit_code"] for r in report["runs"]] == [0] * len(ablation.ROWS), report["runs"]
    assert {r["row"] for r in report["summary"]} == {row[0] for row in ablation.ROWS} | {ablation.ORACLE}
    assert report["above_oracle"] == []  # no row beats the generator's exact probabilities beyond its interval


def test_oracle_row_is_one_per_seed_and_a_row_above_it_is_flagged():
    def run(row, seed, auc, oracle_auc=0.8):
        return {"row": row, "seed": seed, "test": {"click": {"auc": auc, "hit@3": 0.5}, "hide": {"auc": 0.6, "hit@3": 0.3}},
                "oracle": {"click": {"auc": oracle_auc, "hit@3": 0.6}, "hide": {"auc": 0.7, "hit@3": 0.2}}}

    runs = [run("no sequence", s, 0.7 + 0.01 * s) for s in range(3)] + [run("leaky", s, 0.9 + 0.01 * s) for s in range(3)]
    rows = {r["row"]: r for r in ablation.summarise(ablation.with_oracle_row(runs))}
    assert rows[ablation.ORACLE]["seeds"] == 3 and rows[ablation.ORACLE]["auc click"][0] == pytest.approx(0.8)
    above = ablation.models_above_the_oracle(list(rows.values()))
    # "leaky" beats the oracle's click AUC; hide HIT@3 is better when lower, and 0.3 > 0.2 is worse
    assert above == ["leaky auc click"]
