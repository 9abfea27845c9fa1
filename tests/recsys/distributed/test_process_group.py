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


def test_restarted_attempt_keeps_its_keys_apart_in_the_agent_store(monkeypatch):
    """torchrun's agent store outlives a failed attempt: each attempt's keys get their own prefix."""
    from recsys.distributed.process_group import _free_port, _store_of_this_attempt

    port = _free_port()
    agent_store = dist.TCPStore("127.0.0.1", port, 1, is_master=True)  # what torchrun's agent hosts
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)
    _store_of_this_attempt().set("peer_address", "new")
    assert agent_store.get("recsys/attempt_1/peer_address") == b"new"

    ctx = init_distributed()  # joins through the prefixed agent store
    try:
        tensor = torch.ones(1)
        dist.all_reduce(tensor)
        assert (ctx.rank, ctx.world_size, tensor.item()) == (0, 1, 1.0)
    finally:
        teardown(ctx)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert _store_of_this_attempt() is None  # rank 0 hosts a fresh store: nothing to keep apart
