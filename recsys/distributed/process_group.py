"""Process groups: join the job's world, or start a world of one.

Every recipe runs the same code whether it was launched by `torchrun` / TorchX (the launcher sets
`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or as a plain `python` process
(no such variables: a world of size 1 on 127.0.0.1 with a free port). The backend is gloo on CPU and
nccl when CUDA is available.

A job that torchrun restarts after a failure (``--max-restarts``) joins through torchrun's agent
store, which outlives the failed attempt and still holds that attempt's gloo/NCCL peer addresses
(torch 2.13): a restarted rank may read a dead peer's address and fail with "Gloo connectFullMesh
failed ... Connection refused". Each attempt therefore keeps its keys under its own prefix.

Tearing down in the wrong order crashes: with torch 2.13 + gloo about one exit in three aborts
in `destroy_process_group()` while a DistributedModelParallel model is still alive. The caller
drops its model and optimizer references first; `teardown` then collects garbage, waits for
every rank and destroys the group.

Example::

    ctx = init_distributed()
    ...  # build, shard, train
    del model, optimizer
    teardown(ctx)
"""

from __future__ import annotations

import gc
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from recsys.errors import ConfigError

_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Args:
        rank (int): global rank, 0 .. world_size - 1.
        world_size (int): number of processes in the job.
        local_rank (int): rank among the processes on this host.
        local_world_size (int): number of processes on this host.
        device (torch.device): the device this rank computes on (`cpu` or `cuda:<local_rank>`).
        backend (str): the process group backend, "gloo" or "nccl".
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes logs and shared files."""
        return self.rank == 0


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launched_by_launcher() -> bool:
    return all(name in os.environ for name in _LAUNCHER_VARIABLES)


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _context_from_group(backend: str) -> DistContext:
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistContext(rank, world_size, local_rank, local_world_size, device, backend)


def _store_of_this_attempt() -> dist.Store | None:
    """torchrun's agent store with this attempt's own key prefix, or None outside torchelastic."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None  # rank 0 hosts a fresh store for the job: nothing left from earlier attempts
    agent_store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
        is_master=False, timeout=default_pg_timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"recsys/attempt_{attempt}", agent_store)


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the job's process group (or start a world of one) and describe this rank.

    Idempotent: when a default process group already exists, it is described, not re-created.

    Args:
        backend (str | None): "gloo" or "nccl"; None picks nccl when CUDA is available, else gloo.

    Returns:
        DistContext: rank, world size, local rank, device and backend of this process.
    """
    if backend is not None and backend not in _BACKENDS:
        raise ConfigError(
            f"backend {backend!r} is not supported; use one of {list(_BACKENDS)} "
            "(or leave it unset to pick nccl with CUDA, gloo without)"
        )
    if dist.is_initialized():
        return _context_from_group(dist.get_backend())
    backend = backend or _default_backend()
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError(
            "backend 'nccl' needs CUDA, which is not available here; use backend 'gloo'"
        )
    if _launched_by_launcher():
        store = _store_of_this_attempt()
        if store is None:
            dist.init_process_group(backend=backend, init_method="env://")
        else:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    else:
        address = f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(backend=backend, init_method=address, rank=0, world_size=1)
    return _context_from_group(backend)


def teardown(ctx: DistContext | None = None) -> None:
    """Destroy the default process group in the order that does not crash at exit.

    The caller must have dropped its references to the sharded model and its optimizer (`del`)
    before calling. Does nothing when no process group exists.

    Args:
        ctx (DistContext | None): the context from `init_distributed` (kept for symmetry; the
            default group is the one destroyed).
    """
    del ctx
    gc.collect()
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
