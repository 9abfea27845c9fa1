"""Two gloo processes: the hand-placed row-wise table and the planner's tables agree with the
unsharded model on every rank's batch."""

import os

import torch
import torch.multiprocessing as mp
from .toy_sharded import ToyRanker, toy_batch

from recsys.distributed.optimizers import FusedOptimizerConfig
from recsys.distributed.process_group import _free_port, init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model

SHARDING = ShardingConfig(
    {
        "t0": {"sharding_types": ["row_wise"]},
        "t1": {"sharding_types": ["table_wise"]},
        "t2": {"sharding_types": ["data_parallel"]},
    }
)


def _shard_and_compare(rank: int, port: int, results) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    ctx = init_distributed()
    torch.manual_seed(0)  # same reference weights on both ranks
    reference = ToyRanker(torch.device("cpu"))
    model = ToyRanker(torch.device("meta"))
    dmp = shard_model(model, ctx, SHARDING, FusedOptimizerConfig(optimizer="sgd", lr=0.1))
    dmp.load_state_dict(reference.state_dict())  # each rank keeps its slice of the full tables
    batch = toy_batch(8, seed=10 + rank)
    error = (dmp(batch) - reference(batch)).abs().max().item()
    row_wise = dmp.plan.plan["ebc"]["t0"]
    results.put((rank, error, row_wise.sharding_type, row_wise.ranks))
    del dmp, model
    teardown(ctx)


def test_two_rank_sharded_forward_matches_unsharded():
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(
        _shard_and_compare, args=(_free_port(), results), nprocs=2, start_method="spawn"
    )
    reports = sorted(results.get() for _ in range(2))
    for rank, (reported_rank, error, sharding_type, ranks) in enumerate(reports):
        assert reported_rank == rank
        assert error < 1e-6
        assert sharding_type == "row_wise" and ranks == [0, 1]
