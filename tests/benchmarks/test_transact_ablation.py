"""The TransAct ablation script's pieces: t intervals, merged row configs that load, and the summary."""

import importlib.util
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


SUITE_ROWS = [(suite, name, config) for suite, (_, rows) in ablation.SUITES.items() for name, config in rows]


@pytest.mark.parametrize("suite, name, config", SUITE_ROWS)
def test_row_configs_take_the_model_of_the_row_and_the_data_of_the_suite(tmp_path, suite, name, config):
    base_config = ablation.SUITES[suite][0]
    path = ablation.row_config(name, config, tmp_path, base_config)
    cfg = load_config(TrainConfig, path, ablation.seed_overrides(1, tmp_path))
    row = load_config(TrainConfig, ROOT / config)
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
