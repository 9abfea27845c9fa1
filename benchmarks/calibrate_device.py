"""Device constants of the plan's memory and step-time model, measured on one GPU (pure PyTorch).

Prints (and writes ``calibration.json`` into ``--out``):

- ``cublas_workspace_bytes``: what the first matmul of a thread adds to
  ``torch.cuda.memory_allocated`` (cuBLAS / cuBLASLt keep one workspace per (handle, stream), and
  a handle per thread, allocated through the caching allocator), measured once for the main thread
  (forward) and once for autograd's device thread (the backward of a matmul);
- ``allocator_block_bytes``: the allocated size of a 1-byte tensor (the caching allocator's
  rounding);
- ``raw_launch_us``: host time per eager aten op on tiny tensors (launch-bound, no Python model
  code around it), synchronised at the end: the floor of the per-op cost;
- ``autograd_op_us``: host time per dispatched op of a forward + backward + Adam step of a small
  MLP (ops counted with a TorchDispatchMode), the cost of an op with autograd bookkeeping.

On the GPU machine::

    python benchmarks/calibrate_device.py --out runs/bench/calibration
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from recsys.atomic_files import write_json_atomic
from recsys.distributed.topology import TopologyConfig
from recsys.plots import grouped_bars


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def workspace_bytes(device: torch.device) -> dict:
    a = torch.randn(64, 64, device=device, requires_grad=True)
    b = torch.randn(64, 64, device=device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    out = a @ b
    torch.cuda.synchronize(device)
    forward = torch.cuda.memory_allocated(device) - before - out.untyped_storage().nbytes()
    before = torch.cuda.memory_allocated(device)
    out.sum().backward()
    torch.cuda.synchronize(device)
    backward = torch.cuda.memory_allocated(device) - before - a.grad.untyped_storage().nbytes()
    one = torch.empty(1, dtype=torch.uint8, device=device)
    before = torch.cuda.memory_allocated(device)
    two = torch.empty(1, dtype=torch.uint8, device=device)
    block = torch.cuda.memory_allocated(device) - before
    del one, two
    return {"cublas_workspace_forward_bytes": forward, "cublas_workspace_backward_bytes": backward,
            "allocator_block_bytes": block}


def raw_launch_us(device: torch.device, ops: int = 5000) -> float:
    x = torch.zeros(8, device=device)
    for _ in range(100):
        x.add_(1.0)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(ops):
        x.add_(1.0)
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / ops * 1e6


def autograd_op_us(device: torch.device, steps: int = 50) -> dict:
    model = torch.nn.Sequential(*[m for _ in range(8) for m in (torch.nn.Linear(64, 64), torch.nn.ReLU())]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(32, 64, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()

    for _ in range(5):
        step()
    with _Count() as counter:
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    ms = (time.perf_counter() - start) / steps * 1e3
    return {"mlp_step_ms": ms, "mlp_step_ops": counter.ops, "autograd_op_us": ms * 1e3 / counter.ops}


def per_op_plot(result: dict, path: Path) -> Path:
    """Bars of the host cost per op: a bare launch and an op of a forward + backward + Adam step."""
    groups = {"bare aten op": {result["device"]: (result["raw_launch_us"], float("nan"))},
              "op of a training step": {result["device"]: (result["autograd_op_us"], float("nan"))}}
    return grouped_bars(groups, path, "host µs per op", "per-op host cost (the plan's launch_overhead_us)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              **workspace_bytes(device), "raw_launch_us": raw_launch_us(device), **autograd_op_us(device)}
    write_json_atomic(Path(args.out) / "calibration.json", result, sort_keys=True)
    print(json.dumps(result, indent=1, sort_keys=True))
    host = TopologyConfig().for_host(result["raw_launch_us"])
    print(f"this host's plan constants (topology): launch_overhead_us: {host.launch_overhead_us:.2f}, "
          f"step_fixed_ms: {host.step_fixed_ms:.2f}  (plan_vs_measured.py --raw-launch-us {result['raw_launch_us']:.2f})")
    print(f"wrote {Path(args.out) / 'calibration.json'} and {per_op_plot(result, Path(args.out) / 'calibration.png')}")
    return result


if __name__ == "__main__":
    main()
