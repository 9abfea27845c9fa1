import copy
import json

import pytest
import torch
from torchrec import KeyedJaggedTensor
from .toy_sharded import FEATURES, MIXED, ToyRanker, ToySequenceModel, full_state, toy_batch

from recsys.distributed.optimizers import FusedOptimizerConfig
from recsys.distributed.plan_io import load_plan, save_plan
from recsys.distributed.sharding import ShardingConfig, plan_sharding, plan_to_dict, plan_to_text, shard_model
from recsys.errors import ConfigError

def _table_types(plan) -> dict:
    return {table: sharding.sharding_type for table, sharding in plan.plan["ebc"].items()}


def test_constraints_are_validated_with_the_valid_values_named():
    with pytest.raises(ConfigError, match="row_wise"):
        ShardingConfig({"t0": {"sharding_types": ["rowwise"]}})
    with pytest.raises(ConfigError, match="fused"):
        ShardingConfig({"t0": {"compute_kernels": ["fast"]}})
    with pytest.raises(ConfigError, match="must be a list"):
        ShardingConfig({"t0": {"sharding_types": "row_wise"}})
    with pytest.raises(ConfigError, match="sharding_types"):
        ShardingConfig({"t0": {"types": ["row_wise"]}})


def test_unknown_table_is_named(ctx):
    with pytest.raises(ConfigError, match="t9"):
        plan_sharding(ToyRanker(torch.device("meta")), ctx, ShardingConfig({"t9": {}}))


def test_meta_model_is_sharded_as_constrained_and_materialised(ctx):
    dmp = shard_model(ToyRanker(torch.device("meta")), ctx, MIXED, FusedOptimizerConfig())
    assert _table_types(dmp.plan) == {"t0": "row_wise", "t1": "data_parallel", "t2": "column_wise"}
    state = full_state(dmp.state_dict())
    for name, tensor in state.items():
        assert tensor.device.type == "cpu", name
        assert torch.isfinite(tensor).all() and tensor.abs().sum() > 0, name
    assert dmp(toy_batch(6, seed=0)).shape == (6, 1)
    assert json.loads(plan_to_text(dmp.plan))["ebc"]["t0"]["sharding_type"] == "row_wise"


def test_sharded_forward_matches_the_unsharded_model(ctx):
    torch.manual_seed(0)
    model = ToyRanker(torch.device("cpu"))
    reference = copy.deepcopy(model)
    dmp = shard_model(model, ctx, MIXED, FusedOptimizerConfig(optimizer="sgd", lr=0.1))
    reference.load_state_dict(full_state(dmp.state_dict()))
    batch = toy_batch(8, seed=1)
    torch.testing.assert_close(dmp(batch), reference(batch), atol=1e-6, rtol=1e-6)
    assert set(FEATURES) == set(batch.keys())


def test_table_row_wise_is_placed_by_hand_on_cpu(ctx):
    sharding = ShardingConfig({"t0": {"sharding_types": ["table_row_wise"]}})
    plan = plan_sharding(ToyRanker(torch.device("meta")), ctx, sharding)
    assert _table_types(plan)["t0"] == "table_row_wise"


def test_sequence_tables_stay_off_data_parallel_on_cpu(ctx):
    plan = plan_sharding(ToySequenceModel(torch.device("meta")), ctx, ShardingConfig())
    assert plan.plan["ec"]["s0"].sharding_type != "data_parallel"
    with pytest.raises(ConfigError, match="4586"):
        plan_sharding(
            ToySequenceModel(torch.device("meta")),
            ctx,
            ShardingConfig({"s0": {"sharding_types": ["data_parallel"]}}),
        )


def test_training_planner_sees_this_machines_memory(ctx):
    import os

    from recsys.distributed.sharding import _make_topology

    topology = _make_topology(ctx)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert topology.devices[0].storage.ddr == physical // ctx.local_world_size  # not TorchRec's 128 GB default


def test_training_planner_refuses_a_reservation_beyond_memory_naming_recsys_plan(ctx):
    from recsys.distributed.dense_estimate import DenseEstimate
    from recsys.distributed.dense_reservation import dense_reservation

    huge = DenseEstimate(parameter_bytes=0, optimizer_bytes=0, activation_parts={"encoder": 10**15}, flop_parts={})
    with pytest.raises(ConfigError, match="train.batch_size=64 per rank.*recsys plan"):
        plan_sharding(ToyRanker(torch.device("meta")), ctx, ShardingConfig(), batch_size=64,
                      storage_reservation=dense_reservation(huge))


def _kjt(keys, first_id: int):
    """One id per feature and row (2 rows): ``first_id`` for the first feature of row 0, else 0/1."""
    values = [first_id, 1] + [0, 1] * (len(keys) - 1)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.tensor(values), lengths=torch.ones(2 * len(keys), dtype=torch.int32)
    )


@pytest.mark.parametrize("sharding_type", ["table_wise", "row_wise", "column_wise", "data_parallel"])
@pytest.mark.parametrize("bad_id", [40, 10**6, -1])
def test_out_of_range_id_fed_to_the_sharded_model_raises(ctx, sharding_type, bad_id):
    """FBGEMM's default bounds check reads row 0 for an id past the table (logits of item 0)."""
    sharding = ShardingConfig({"t0": {"sharding_types": [sharding_type]}})  # t0 has 40 rows
    dmp = shard_model(ToyRanker(torch.device("meta")), ctx, sharding, FusedOptimizerConfig())
    assert dmp(_kjt(FEATURES, 39)).shape == (2, 1)
    with pytest.raises(RuntimeError, match="idx < num_rows|out of bounds"):
        dmp(_kjt(FEATURES, bad_id))


def test_out_of_range_id_in_a_sharded_sequence_table_raises(ctx):
    dmp = shard_model(ToySequenceModel(torch.device("meta")), ctx, ShardingConfig(), FusedOptimizerConfig())
    ec = dmp.module.ec  # the sharded EmbeddingCollection (table s0: 50 rows)
    assert ec(_kjt(["seq"], 49))["seq"].values().shape == (2, 8)
    with pytest.raises(RuntimeError, match="idx < num_rows"):
        ec(_kjt(["seq"], 50))


def test_plan_with_bounds_checked_tables_still_saves(ctx, tmp_path):
    dmp = shard_model(ToyRanker(torch.device("meta")), ctx, MIXED, FusedOptimizerConfig())
    path = save_plan(dmp.plan, tmp_path / "plan.json", ctx.world_size, ctx.device.type)
    assert plan_to_dict(load_plan(path)) == plan_to_dict(dmp.plan)
