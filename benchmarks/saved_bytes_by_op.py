"""What one training step's forward keeps for backward, by autograd node type, on each device.

    python benchmarks/saved_bytes_by_op.py --model mimn --batch 1024 --max-len 50 --devices cpu cuda
    python benchmarks/saved_bytes_by_op.py --model gru4rec --batch 256 --devices cpu --out runs/bench/saved.json

The dense estimate (:mod:`recsys.distributed.dense_estimate`) is checked on CPU against the bytes
autograd saves; on a GPU some ops save other tensors (fused kernels: a GRU cell's workspace, say).
This builds the zoo model's probe step (:func:`recsys.distributed.probe_workloads.probe_case`:
unsharded model, one batch of the synthetic feed) on each device, runs the forward, walks the
autograd graph from the loss and sums the storage bytes of every node's saved tensors (each storage
counted once, under the first node that holds it), per node type. It prints the types side by side
with the difference (last device minus first) and the dense estimate's activation bytes, and on
CUDA the allocator's peak of the forward and of forward + backward beyond what was allocated
before. Writes JSON.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

from recsys.atomic_files import write_json_atomic

MB = 1e6


def saved_bytes_by_node(loss: torch.Tensor) -> tuple[Counter, Counter]:
    """``(bytes, nodes)`` per autograd node type reachable from ``loss``: the storage bytes of the
    tensors each node saved for backward (a storage shared by several nodes counted once)."""
    totals, counts, storages = Counter(), Counter(), set()
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = type(node).__name__
        counts[kind] += 1
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed, or not a tensor autograd can give back
                continue
            for tensor in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                    storage = tensor.untyped_storage()
                    key = (tensor.device.type, storage.data_ptr(), storage.nbytes())
                    if key not in storages:
                        storages.add(key)
                        totals[kind] += storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return totals, counts


def measure(model_name: str, batch: int, max_len: int, device: str) -> dict:
    """Saved bytes per node type of one forward of the probe step on ``device`` (and, on CUDA, the
    allocator's forward and forward + backward peaks above what was allocated before)."""
    from recsys.distributed.dense_estimate import estimate_dense
    from recsys.distributed.probe_workloads import probe_case

    case = probe_case(model_name, batch_size=batch, max_len=max_len, device=device)
    estimate = estimate_dense(case.model, case.work)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    loss = case.step()
    totals, counts = saved_bytes_by_node(loss)
    report = {"device": device, "saved_bytes": dict(totals), "nodes": dict(counts),
              "saved_total_bytes": sum(totals.values()), "estimated_activation_bytes": estimate.activation_bytes,
              "estimated_forward_transient_bytes": estimate.forward_transient_bytes}
    if cuda:
        torch.cuda.synchronize()
        report["forward_peak_bytes"] = torch.cuda.max_memory_allocated() - before
        loss.backward()
        torch.cuda.synchronize()
        report["forward_backward_peak_bytes"] = torch.cuda.max_memory_allocated() - before
    return report


def format_table(reports: list[dict]) -> str:
    kinds = sorted({k for r in reports for k in r["saved_bytes"]},
                   key=lambda k: -max(r["saved_bytes"].get(k, 0) for r in reports))
    devices = [r["device"] for r in reports]
    head = f"{'autograd node':<36}" + "".join(f"{d + ' MB':>14}{'nodes':>8}" for d in devices)
    head += f"{'diff MB':>12}" if len(reports) > 1 else ""
    lines = [head, "-" * len(head)]
    for kind in kinds:
        cells = "".join(f"{r['saved_bytes'].get(kind, 0) / MB:>14.3f}{r['nodes'].get(kind, 0):>8}" for r in reports)
        diff = (reports[-1]["saved_bytes"].get(kind, 0) - reports[0]["saved_bytes"].get(kind, 0)) / MB
        lines.append(f"{kind:<36}{cells}" + (f"{diff:>12.3f}" if len(reports) > 1 else ""))
    lines.append("-" * len(head))
    lines.append(f"{'total saved':<36}" + "".join(f"{r['saved_total_bytes'] / MB:>14.3f}{'':>8}" for r in reports))
    lines.append(f"{'estimated activations':<36}"
                 + "".join(f"{r['estimated_activation_bytes'] / MB:>14.3f}{'':>8}" for r in reports))
    peaks = (("forward_peak_bytes", "CUDA forward peak"), ("forward_backward_peak_bytes", "CUDA fwd+bwd peak"))
    for key, label in peaks:
        if any(key in r for r in reports):
            lines.append(f"{label:<36}" + "".join(
                f"{r[key] / MB:>14.3f}{'':>8}" if key in r else f"{'-':>14}{'':>8}" for r in reports))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mimn", help="a zoo model")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--max-len", type=int, default=50, help="most events per history")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/saved_bytes_by_op.json"))
    args = parser.parse_args()
    devices = [d for d in args.devices if not d.startswith("cuda") or torch.cuda.is_available()]
    if devices != args.devices:
        print(f"no CUDA device: measuring {devices} only")
    reports = [measure(args.model, args.batch, args.max_len, d) for d in devices]
    print(f"{args.model}, batch {args.batch}, histories up to {args.max_len} events")
    print(format_table(reports))
    write_json_atomic(args.out, {"model": args.model, "batch": args.batch, "max_len": args.max_len,
                                 "torch": torch.__version__, "reports": reports})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
