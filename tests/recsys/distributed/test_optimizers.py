import pytest
import torch
from .toy_sharded import MIXED, ToyRanker, full_state, toy_batch

from recsys.distributed.optimizers import (
    DenseOptimizerConfig,
    FusedOptimizerConfig,
    build_optimizer,
    dense_parameters,
)
from recsys.distributed.sharding import shard_model
from recsys.errors import ConfigError


def test_bad_optimizer_configs_name_the_choices():
    with pytest.raises(ConfigError, match="row_wise_adagrad"):
        FusedOptimizerConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="adam"):
        DenseOptimizerConfig(name="rmsprop")
    with pytest.raises(ConfigError, match="lr"):
        DenseOptimizerConfig(lr=0.0)


def test_dense_optimizer_covers_dense_layers_and_data_parallel_tables_only(ctx):
    dmp = shard_model(ToyRanker(torch.device("meta")), ctx, MIXED, FusedOptimizerConfig())
    assert sorted(dense_parameters(dmp)) == [
        "ebc.embedding_bags.t1.weight",
        "linear.bias",
        "linear.weight",
    ]
    assert sorted(dmp.fused_optimizer.params) == [
        "ebc.embedding_bags.t0.weight",
        "ebc.embedding_bags.t2.weight",
    ]


def test_fused_adam_is_refused_on_cpu(ctx):
    with pytest.raises(ConfigError, match="row_wise_adagrad"):
        shard_model(ToyRanker(torch.device("meta")), ctx, MIXED, FusedOptimizerConfig("adam"))


@pytest.mark.parametrize("fused", ["row_wise_adagrad", "adagrad", "sgd"])
def test_one_step_changes_every_parameter(ctx, fused):
    dmp = shard_model(
        ToyRanker(torch.device("meta")), ctx, MIXED, FusedOptimizerConfig(optimizer=fused, lr=0.1)
    )
    optimizer = build_optimizer(dmp, DenseOptimizerConfig(name="adagrad", lr=0.1))
    before = full_state(dmp.state_dict())
    optimizer.zero_grad()
    dmp(toy_batch(16, seed=2)).pow(2).sum().backward()
    optimizer.step()
    after = full_state(dmp.state_dict())
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
