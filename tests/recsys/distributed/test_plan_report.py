import json
import resource

import matplotlib.image
import pytest

from recsys.data.features import FeatureSpec
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.distributed.plan_io import load_plan
from recsys.distributed.plan_report import (
    feature_spec_with_rows,
    imbalance_stats,
    plan_dry_run,
    synthetic_feature_spec,
)
from recsys.distributed.sharding import ShardingConfig, plan_to_dict
from recsys.distributed.topology import GB, TopologyConfig
from recsys.errors import ConfigError

SMALL = FeatureSpec(num_users=5_000, num_items=20_000, item_attributes={"category": 16})
CONSTRAINED = ShardingConfig(
    {"t_item_id": {"sharding_types": ["row_wise"]}, "t_surface": {"sharding_types": ["data_parallel"]}}
)


def _tables(report) -> dict:
    return {table.name: table for table in report.tables}


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"hosts": 0}, "topology.hosts"),
        ({"devices_per_host": 2.5}, "topology.devices_per_host"),
        ({"compute_device": "tpu"}, "compute_device"),
        ({"hbm_gb": -1}, "topology.hbm_gb"),
        ({"hosts": 2, "intra_host_bw_gbps": 10, "inter_host_bw_gbps": 50}, "inter_host_bw_gbps"),
    ],
)
def test_topology_rejects_bad_values_naming_the_field(fields, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TopologyConfig(**fields)


def test_topology_maps_onto_torchrec_units():
    topology = TopologyConfig(hosts=2, devices_per_host=4, hbm_gb=80, ddr_gb=64, intra_host_bw_gbps=450,
                              inter_host_bw_gbps=50).to_topology()
    assert topology.world_size == 8 and topology.local_world_size == 4
    assert topology.devices[7].storage.hbm == 80 * GB and topology.devices[0].storage.ddr == 64 * GB
    assert topology.intra_host_bw == pytest.approx(450 * GB / 1000)  # bytes per ms
    assert topology.inter_host_bw == pytest.approx(50 * GB / 1000)
    cpu = TopologyConfig(hosts=1, devices_per_host=2, compute_device="cpu").to_topology()
    assert cpu.compute_device == "cpu" and cpu.devices[0].storage.hbm == 0


@pytest.mark.parametrize("hosts, devices", [(1, 2), (2, 8)])
def test_dry_run_honours_constraints(hosts, devices):
    topology = TopologyConfig(hosts=hosts, devices_per_host=devices)
    report = plan_dry_run("dlrm", SMALL, topology, CONSTRAINED, embedding_dim=16)
    world = list(range(topology.world_size))
    tables = _tables(report)
    assert tables["t_item_id"].sharding_type == "row_wise"
    assert sorted(tables["t_item_id"].ranks) == world
    assert sum(shard["sizes"][0] for shard in tables["t_item_id"].shards) == SMALL.num_items
    assert tables["t_surface"].sharding_type == "data_parallel" and sorted(tables["t_surface"].ranks) == world
    assert set(tables) == {"t_item_id", "t_user_id", "t_surface", "t_item_category"}
    assert len(report.ranks) == topology.world_size
    # per-rank estimates add up to the per-table ones
    assert sum(r.perf_ms["total"] for r in report.ranks) == pytest.approx(sum(t.perf_ms["total"] for t in tables.values()))
    table_hbm = sum(t.hbm_gb for t in tables.values())
    assert sum(r.hbm_used_gb for r in report.ranks) == pytest.approx(table_hbm + topology.world_size * report.reserved_gb["hbm"])
    assert report.imbalance["perf_ms"]["max"] == pytest.approx(max(r.perf_ms["total"] for r in report.ranks))


def test_billion_row_table_plans_in_seconds_without_allocating():
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    report = plan_dry_run(
        "dlrm", {"t_item_id": 10**9, "t_user_id": 10**8}, TopologyConfig(hosts=8, devices_per_host=8), batch_size=4096,
        embedding_dim=128,
    )
    peak_growth_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024**2
    assert peak_growth_gb < 1.0  # the item table alone is 477 GB
    assert report.dry_run_seconds < 15
    item = _tables(report)["t_item_id"]
    assert item.rows == 10**9 and item.dim == 128
    assert item.hbm_gb > 10**9 * 128 * 4 / GB  # weights plus optimizer state
    assert all(r.hbm_used_gb <= r.hbm_cap_gb for r in report.ranks)
    assert report.topology.world_size == 64


def test_report_files_are_written_and_parse(tmp_path):
    report = plan_dry_run("dlrm", SMALL, TopologyConfig(hosts=1, devices_per_host=4), CONSTRAINED, embedding_dim=16)
    paths = report.write(tmp_path / "plan")
    data = json.loads(paths["json"].read_text())
    assert data["world_size"] == 4 and len(data["ranks"]) == 4
    assert {t["name"]: t["sharding_type"] for t in data["tables"]}["t_item_id"] == "row_wise"
    assert data["imbalance"]["perf_ms"]["max_over_mean"] >= 1.0
    assert plan_to_dict(load_plan(paths["json"])) == plan_to_dict(report.plan)
    markdown = paths["markdown"].read_text()
    assert "| sparse_arch.t_item_id | 20,000 x 16 | row_wise |" in markdown and "## Imbalance across ranks" in markdown
    image = matplotlib.image.imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 100
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == ["plan.json", "plan.md", "plan_ranks.png"]


def test_imbalance_of_known_values():
    stats = imbalance_stats([1.0, 1.0, 1.0, 5.0])
    assert stats["max"] == 5.0 and stats["mean"] == 2.0 and stats["max_over_mean"] == 2.5
    assert stats["cv"] == pytest.approx(3**0.5 / 2)
    assert imbalance_stats([0.0, 0.0])["cv"] is None


def test_cpu_topology_counts_memory_as_ddr():
    report = plan_dry_run("dlrm", SMALL, TopologyConfig(hosts=1, devices_per_host=2, compute_device="cpu"), embedding_dim=16)
    assert all(r.hbm_used_gb == 0 and r.ddr_used_gb > 0 for r in report.ranks)
    assert report.imbalance["hbm_gb"]["max_over_mean"] is None


def test_errors_name_the_problem():
    cpu = TopologyConfig(hosts=1, devices_per_host=2, compute_device="cpu")
    with pytest.raises(ConfigError, match="compute_device=cuda"):
        plan_dry_run("dlrm", SMALL, cpu, CONSTRAINED)
    with pytest.raises(ConfigError, match="dlrm does not fit 2 ranks(.|\n)*embedding tables at least(.|\n)*fused_uvm_caching"):
        plan_dry_run("dlrm", {"t_item_id": 10**9}, TopologyConfig(hosts=1, devices_per_host=2, hbm_gb=1, ddr_gb=1))
    with pytest.raises(ConfigError, match="t_item_colour"):
        feature_spec_with_rows(SMALL, {"t_item_colour": 10})


def test_synthetic_feature_spec_matches_the_generated_log():
    cfg = SyntheticConfig(num_users=30, num_items=200, num_topics=8, days=20, heavy_user_fraction=0.0,
                          mean_events_per_user=20)
    assert synthetic_feature_spec(cfg, max_history=7) == FeatureSpec.from_log(generate(cfg), max_history=7)


def test_topology_refuses_batch_size_naming_train_batch_size(tmp_path):
    from recsys.config import load_config

    path = tmp_path / "topology.yaml"
    path.write_text("hosts: 1\ndevices_per_host: 2\nbatch_size: 4096\n")
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(TopologyConfig, path)


def test_recsys_plan_plans_for_the_runs_batch_per_rank(tmp_path):
    from recsys.cli import main

    main(["plan", "--config", "configs/plan/dlrm_1b.yaml", "--topology", "configs/plan/h100_8x8.yaml",
          "--out", str(tmp_path), "data.synthetic.num_items=100000", "data.synthetic.num_users=10000",
          "train.batch_size=1024"])
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["batch_size_per_rank"] == 1024


def test_hstu_1b_at_4096_per_rank_is_refused_with_the_numbers_and_a_batch_size_that_fits(tmp_path, capsys):
    import re

    from recsys.cli import main

    args = ["plan", "--config", "configs/plan/hstu_1b.yaml", "--topology", "configs/plan/h100_8x8.yaml", "--out", str(tmp_path)]
    assert main(args) == 2
    message = capsys.readouterr().err
    assert "hstu does not fit 64 ranks at train.batch_size=4096" in message
    assert re.search(r"activations kept for backward \d+\.\d GB", message)
    for knob in ("shorter sequences", "activation checkpointing", "more ranks", "fused_uvm_caching"):
        assert knob in message
    assert not (tmp_path / "plan.json").exists()
    fitting = int(re.search(r"train\.batch_size=(\d+) \(the largest", message).group(1))
    assert 1 <= fitting < 4096
    assert main([*args, f"train.batch_size={fitting}"]) == 0
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["batch_size_per_rank"] == fitting and report["largest_batch_size_per_rank"] >= fitting
    used = max(rank["memory_gb"]["total"] for rank in report["ranks"])
    assert used <= 80 * (1 - report["topology"]["headroom"])
    assert report["dense"]["activation_gb"] > 1  # hundreds of MB per sequence of 1024 tokens x 16 layers


def test_report_splits_memory_and_time_by_part_and_keeps_torchrecs_stats(tmp_path):
    report = plan_dry_run("dlrm", SMALL, TopologyConfig(hosts=1, devices_per_host=2), batch_size=256, embedding_dim=16)
    dense = report.dense
    for rank in report.ranks:
        m, p = rank.memory_gb, rank.perf_ms
        parts = ("tables", "dense", "activations", "transient", "fixed", "inputs")
        assert m["total"] == pytest.approx(sum(m[k] for k in parts))
        assert m["activations"] == pytest.approx(dense.activation_gb) and dense.activation_gb > 0
        assert m["fixed"] == pytest.approx(2 * 32 / 1024)  # two cuBLAS workspaces of 32 MiB on cuda
        device = p["total"] + p["dense_compute"] + p["memory_traffic"]
        assert p["device"] == pytest.approx(device)
        assert p["step"] == pytest.approx(max(device, p["framework_overhead"]) + p["step_fixed"] + p["dense_allreduce"])
    assert dense.ops_per_step > 100 and dense.overhead_ms == pytest.approx(dense.ops_per_step * 7.6e-3)
    assert dense.compute_ms == pytest.approx(dense.flops / (67e12 * 0.4) * 1e3)
    # the planner reserved the step's peak (dense state, saved activations and the transients of its
    # largest phase), the cuBLAS workspaces and the inputs, not TorchRec's guess
    reserved = report.reserved_gb["hbm"]
    assert dense.peak_phase == "backward"
    assert reserved == pytest.approx(dense.parameter_gb * 4 + dense.activation_gb + dense.transient_gb + dense.fixed_gb
                                     + dense.input_gb, rel=1e-3)
    markdown = report.to_markdown()
    assert "| rank | host | tables | dense | activations | transient | fixed | inputs |" in markdown
    assert "dense compute (fwd + bwd)" in markdown and "## TorchRec planner stats" in markdown
    assert report.largest_batch_size > 256
    paths = report.write(tmp_path)
    assert json.loads(paths["json"].read_text())["torchrec_stats"]
