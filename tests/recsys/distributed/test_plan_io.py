import copy
import json

import pytest
import torch
from .toy_sharded import MIXED, ToyRanker, ToySequenceModel, toy_batch

from recsys.distributed.optimizers import FusedOptimizerConfig
from recsys.distributed.plan_io import SavedShardingPlan, load_plan, save_plan
from recsys.distributed.plan_report import feature_spec_with_rows, plan_dry_run
from recsys.distributed.sharding import ShardingConfig, plan_sharding, plan_to_dict, shard_model
from recsys.distributed.topology import TopologyConfig
from recsys.errors import ConfigError
from recsys.models import default_feature_spec, get_model

SGD = FusedOptimizerConfig(optimizer="sgd", lr=0.1)


def _saved_toy_plan(ctx, path, **overrides):
    plan = plan_sharding(ToyRanker(torch.device("meta")), ctx, MIXED)
    save_plan(plan, path, world_size=overrides.get("world_size", ctx.world_size),
              compute_device=overrides.get("compute_device", ctx.device.type))
    return plan


def test_saved_plan_loads_back_identically(ctx, tmp_path):
    plan = _saved_toy_plan(ctx, tmp_path / "plan.json")
    loaded = load_plan(tmp_path / "plan.json")
    assert isinstance(loaded, SavedShardingPlan) and loaded.world_size == 1 and loaded.compute_device == "cpu"
    assert plan_to_dict(loaded) == plan_to_dict(plan)
    spec = loaded.plan["ebc"]["t0"].sharding_spec
    assert [shard.placement.rank() for shard in spec.shards] == [0]
    assert loaded.plan["ebc"]["t1"].sharding_spec is None  # data parallel


def test_dmp_with_the_loaded_plan_places_and_computes_identically(ctx, tmp_path):
    torch.manual_seed(0)
    model = ToyRanker(torch.device("cpu"))
    twin = copy.deepcopy(model)
    planned = shard_model(model, ctx, MIXED, SGD)
    save_plan(planned.plan, tmp_path / "plan.json", world_size=1, compute_device="cpu")
    loaded = shard_model(twin, ctx, ShardingConfig(), SGD, plan=load_plan(tmp_path / "plan.json"))
    assert plan_to_dict(loaded.plan) == plan_to_dict(planned.plan)
    assert plan_to_dict(loaded.plan)["ebc"]["t0"]["sharding_type"] == "row_wise"
    loaded.load_state_dict(planned.state_dict())
    batch = toy_batch(8, seed=3)
    torch.testing.assert_close(loaded(batch), planned(batch), rtol=0, atol=0)


def test_sharding_config_plan_file_is_used_by_shard_model(ctx, tmp_path):
    plan = _saved_toy_plan(ctx, tmp_path / "plan.json")
    dmp = shard_model(ToyRanker(torch.device("meta")), ctx, ShardingConfig(plan=str(tmp_path / "plan.json")), SGD)
    assert plan_to_dict(dmp.plan) == plan_to_dict(plan)
    with pytest.raises(ConfigError, match="exclusive"):
        ShardingConfig(MIXED.tables, plan=str(tmp_path / "plan.json"))


def test_dry_run_report_plan_shards_a_zoo_model(ctx, tmp_path):
    spec = feature_spec_with_rows(default_feature_spec(), {"t_item_id": 300})
    topology = TopologyConfig(hosts=1, devices_per_host=1, compute_device="cpu")
    paths = plan_dry_run("dlrm", spec, topology, embedding_dim=8).write(tmp_path)
    model = get_model("dlrm", feature_spec=spec, device="meta", embedding_dim=8)
    dmp = shard_model(model, ctx, ShardingConfig(plan=str(paths["json"])), SGD)
    assert plan_to_dict(dmp.plan) == json.loads(paths["json"].read_text())["plan"]["modules"]


@pytest.mark.parametrize(
    "save_as, model_cls, fragment",
    [
        ({"world_size": 2}, ToyRanker, "world size 2, this job has 1 ranks"),
        ({"compute_device": "cuda"}, ToyRanker, "compute device 'cuda'"),
        ({}, ToySequenceModel, "modules"),
    ],
)
def test_mismatched_plans_are_refused_naming_the_difference(ctx, tmp_path, save_as, model_cls, fragment):
    _saved_toy_plan(ctx, tmp_path / "plan.json", **save_as)
    with pytest.raises(ConfigError, match=fragment):
        shard_model(model_cls(torch.device("meta")), ctx, ShardingConfig(), SGD, plan=load_plan(tmp_path / "plan.json"))


def test_table_size_mismatch_names_the_table(ctx, tmp_path):
    _saved_toy_plan(ctx, tmp_path / "plan.json")
    document = json.loads((tmp_path / "plan.json").read_text())
    for shard in document["modules"]["ebc"]["t2"]["shards"]:
        shard["sizes"][0] = 99
    (tmp_path / "plan.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"'t2' is 20 x 8 in the model, the plan's shards cover 99 x 8"):
        plan_sharding(ToyRanker(torch.device("meta")), ctx, ShardingConfig(), load_plan(tmp_path / "plan.json"))


def test_unreadable_plan_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_plan(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"ebc": {}}))
    with pytest.raises(ConfigError, match="not a sharding plan file"):
        load_plan(tmp_path / "other.json")
    (tmp_path / "damaged.json").write_text(json.dumps({"format": "recsys-sharding-plan", "version": 1, "modules": {}}))
    with pytest.raises(ConfigError, match="damaged"):
        load_plan(tmp_path / "damaged.json")
