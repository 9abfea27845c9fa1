import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.distributed.process_group import init_distributed, teardown
from recsys.errors import ConfigError


def test_standalone_world_of_one_then_idempotent_then_teardown(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()
    ctx = init_distributed()
    try:
        assert (ctx.rank, ctx.world_size, ctx.local_rank) == (0, 1, 0)
        assert ctx.backend == "gloo" and ctx.device == torch.device("cpu")
        assert ctx.is_main
        again = init_distributed()
        assert again == ctx
        tensor = torch.ones(2)
        dist.all_reduce(tensor)
        assert tensor.tolist() == [1.0, 1.0]
    finally:
        teardown(ctx)
    assert not dist.is_initialized()
    teardown(ctx)  # nothing left to destroy: no error


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="gloo"):
        init_distributed(backend="mpi")


def _rank_reports(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    ctx = init_distributed()
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    results.put((ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, tensor.item()))
    teardown(ctx)


def test_launcher_environment_joins_the_job():
    from recsys.distributed.process_group import _free_port

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(
        _rank_reports, args=(2, _free_port(), results), nprocs=2, start_method="spawn"
    )
    reports = sorted(results.get() for _ in range(2))
    assert reports == [(0, 2, 0, "gloo", 3.0), (1, 2, 1, "gloo", 3.0)]
