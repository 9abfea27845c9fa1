"""The lr schedule: known factors, range checks, and that it drives FBGEMM's fused optimizer too."""

import math

import pytest
import torch

from recsys.distributed.optimizers import DenseOptimizerConfig, FusedOptimizerConfig, build_optimizer
from recsys.distributed.process_group import init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model
from recsys.errors import ConfigError
from recsys.train.lr_schedule import LRScheduleConfig, build_lr_schedule, lr_factor, restore_lr_schedule
from tests.recsys.distributed.toy_sharded import ToyRanker


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed()
    yield context
    teardown(context)


def test_factors_of_warmup_and_each_decay():
    warm_cos = LRScheduleConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    assert [lr_factor(t, 14, warm_cos) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(9, 14, warm_cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # half way
    assert lr_factor(14, 14, warm_cos) == pytest.approx(0.1)
    assert lr_factor(100, 14, warm_cos) == pytest.approx(0.1)  # past the end: stays at the floor
    linear = LRScheduleConfig(decay="linear", min_lr_ratio=0.0)
    assert [lr_factor(t, 4, linear) for t in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_factor(7, 10, LRScheduleConfig(warmup_steps=2)) == 1.0


@pytest.mark.parametrize(
    "kwargs, field", [({"warmup_steps": -1}, "warmup_steps"), ({"decay": "exp"}, "decay"), ({"min_lr_ratio": 1.5}, "min_lr_ratio")]
)
def test_out_of_range_values_are_config_errors_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"optim.schedule.{field}"):
        LRScheduleConfig(**kwargs)


def test_restore_continues_at_the_saved_step_and_sets_the_lrs(ctx):
    dmp = shard_model(ToyRanker(torch.device("meta")), ctx, ShardingConfig(), FusedOptimizerConfig(optimizer="sgd", lr=0.5))
    optimizer = build_optimizer(dmp, DenseOptimizerConfig("sgd", lr=0.5))
    config = LRScheduleConfig(warmup_steps=2, decay="linear")
    scheduler = build_lr_schedule(optimizer, config, total_steps=10)
    restore_lr_schedule(scheduler, {"last_epoch": 6})
    expected = 0.5 * lr_factor(6, 10, config)
    assert scheduler.last_epoch == 6
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([expected] * len(optimizer.param_groups))
