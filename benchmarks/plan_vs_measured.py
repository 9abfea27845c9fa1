"""Planned vs measured memory and step time per rank, for every zoo model at three batch sizes.

For each model and batch size B the script plans the job as ``recsys plan`` does (one rank of this
machine: its memory, ``--peak-tflops`` and ``--efficiency``), then trains it for real with that plan
(DMP, the fused table optimizer, Adam on the dense layers) on batches of the synthetic feed with
histories of up to ``--max-len`` events, and compares:

- planned memory per rank (tables + dense + activations + inputs) with
  ``torch.cuda.max_memory_allocated`` over one training step after warm-up (GPU only);
- planned step time (embedding lookups + dense compute + all-reduce) with the measured median
  step (CUDA-synchronised wall time); and the planned aten ops per step (counted on CPU on the
  unsharded model) with the ops the sharded step dispatches here (``measured_ops_per_step``,
  one step under :class:`~recsys.distributed.step_trace.StepTrace`, DistributedModelParallel's
  own ops included; its 15 most dispatched ops in ``measured_top_ops``).

Writes ``plan_vs_measured.json`` (one row per model and batch) and ``plan_vs_measured.png``
(planned vs measured, both quantities) into ``--out``.

On a GPU every model is measured in a process of its own (``--one-process`` turns that off), as
a training job runs it: allocations one model leaves behind (a library's cached buffers, objects
in reference cycles not yet collected) would otherwise count in the next model's peak. Each
row also records ``allocated_before_gb``, the bytes allocated on the device before its model
was built (0 in a fresh process, the cuBLAS workspaces of the earlier batch sizes after that).

The plan's host constants (time per dispatched op, per step) are the reference host's unless
``--raw-launch-us`` gives this host's bare-op time (``benchmarks/calibrate_device.py`` measures it):
a slower CPU beside the same GPU makes every host-bound step slower. ``--profile`` adds, per row,
the summed device time of one step's kernels and its largest kernels (where the time goes when a
row misses).

On the GPU machine (H100 SXM: ``--hbm-bw-gbps 3350``)::

    python benchmarks/calibrate_device.py --out runs/bench/calibration      # prints raw_launch_us
    python benchmarks/plan_vs_measured.py --out runs/bench/plan-vs-measured --raw-launch-us 9.85 --profile

CPU smoke run (tiny models, memory not measured, seconds)::

    python benchmarks/plan_vs_measured.py --device cpu --tiny --batch-sizes 4 8 16 --out runs/plan-smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchrec.distributed.types import ShardingPlan

from recsys.atomic_files import write_atomic, write_json_atomic
from recsys.data.synthetic import SyntheticConfig
from recsys.distributed.optimizers import DenseOptimizerConfig, FusedOptimizerConfig, build_optimizer
from recsys.distributed.plan_report import plan_dry_run
from recsys.distributed.probe_workloads import probe_data, training_loss, with_loss
from recsys.distributed.process_group import init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model
from recsys.distributed.step_trace import StepTrace
from recsys.distributed.topology import GB, TopologyConfig
from recsys.models import get_model, list_models

# Models at the sizes their configs in configs/ train (the zoo defaults), and tiny ones for CPU.
TINY = {"hstu": {"embedding_dim": 16, "num_negatives": 8}, "sasrec": {"embedding_dim": 16}}
TINY_DEFAULT = {"embedding_dim": 16}
GPU_WORLD = SyntheticConfig(num_users=2000, num_items=20000, mean_events_per_user=150, heavy_user_fraction=0.05,
                            heavy_user_events=2000)
CPU_WORLD = SyntheticConfig(num_users=60, num_items=300, mean_events_per_user=80, heavy_user_fraction=0.1,
                            heavy_user_events=600)


MEMORY_BAR, TIME_BAR = 0.20, 2.0  # planned peak within 20% of the measured one, planned step within 2x


def plan_case(name: str, batch_size: int, args, device_type: str, hbm_gb: float | None = None,
              model_overrides: dict | None = None):
    """(report, probe data, model overrides): the plan of one (model, batch size) as it is trained
    on ``device_type`` (the data, sizes and topology of that device; planned on any machine);
    ``model_overrides``: config fields on top of the zoo's (e.g. a run's attention kernel)."""
    world = GPU_WORLD if device_type == "cuda" else CPU_WORLD
    overrides = {**(TINY.get(name, TINY_DEFAULT) if args.tiny else {}), **(model_overrides or {})}
    data = probe_data(name, batch_size, args.max_len, world, cache_dir=str(Path(args.out) / "lifelong"),
                      fused_attention=device_type == "cuda", accelerator=device_type == "cuda")
    overrides = {**data.overrides, **overrides}
    report = plan_dry_run(name, data.spec, _topology(device_type, args, hbm_gb), batch_size=data.work.batch_size,
                          lengths=data.work.lengths, matmul_precision=args.matmul_precision,
                          lifelong_rows={k: getattr(data.work, k) for k in ("impressions_per_row", "next_action_pairs_per_row")},
                          **overrides)
    return report, data, overrides


def measure(name: str, batch_size: int, args, ctx) -> dict:
    """Plans and trains one (model, batch size); returns the planned and measured numbers."""
    device = ctx.device
    hbm = torch.cuda.get_device_properties(device).total_memory / GB if device.type == "cuda" else None
    gc.collect()  # the previous case's model and optimizer, if reference cycles still hold them
    before = torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else None
    report, data, overrides = plan_case(name, batch_size, args, device.type, hbm)
    model = with_loss(get_model(name, feature_spec=data.spec, device=torch.device("meta"), **overrides), data.spec)
    plan = report.plan
    if hasattr(model, "loss") and hasattr(model, "model"):  # RankingTask: its tables sit under "model."
        plan = ShardingPlan({f"model.{path}": tables for path, tables in plan.plan.items()})
    dmp = shard_model(model, ctx, ShardingConfig(), FusedOptimizerConfig("row_wise_adagrad", lr=0.01), plan=plan)
    optimizer = build_optimizer(dmp, DenseOptimizerConfig(name="adam", lr=1e-4))
    batch = data.batch.to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        training_loss(dmp, batch).backward()
        optimizer.step()

    peak, times = _run(step, device, args.warmup, args.steps)
    with StepTrace() as trace:  # after the timed steps: the count's own overhead is not timed
        step()
    profile = _profile(step) if args.profile and device.type == "cuda" else {}
    return {**row(name, report, data, args.max_len, peak, statistics.median(times)), "allocated_before_gb": before,
            "measured_ops_per_step": trace.ops, "measured_top_ops": dict(trace.by_op.most_common(15)), **profile}


def _profile(step, top: int = 8) -> dict:
    """One step under the profiler: ``device_kernels_ms`` (the summed time of its GPU kernels; the
    step's device time if they never overlap) and its ``top`` kernels by device time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return {"device_kernels_ms": sum(e.self_device_time_total for e in kernels) / 1e3,
            "top_kernels_ms": {e.key[:120]: e.self_device_time_total / 1e3 for e in kernels[:top]}}


def row(name: str, report, data, max_len: int, peak_gb: float | None, step_ms: float) -> dict:
    """One result row: planned parts and totals, measured peak and step, their ratios and the bars."""
    rank = report.ranks[0]
    planned_gb, planned_ms = rank.memory_gb["total"], report.step_ms["total"]
    return {
        "model": name,
        "batch_size": data.work.batch_size,
        "max_len": max_len,
        "mean_len": data.work.lengths.mean,
        "planned_gb": planned_gb,
        "planned_parts_gb": {k: v for k, v in rank.memory_gb.items() if k != "total"},
        "planned_ops_per_step": report.dense.ops_per_step,
        "measured_peak_gb": peak_gb,
        "memory_ratio": peak_gb / planned_gb if peak_gb else None,
        "planned_step_ms": planned_ms,
        "planned_step_parts_ms": report.step_ms,
        "measured_step_ms": step_ms,
        "time_ratio": step_ms / planned_ms,
        **meets_bars(planned_gb, peak_gb, planned_ms, step_ms),
    }


def meets_bars(planned_gb: float, measured_gb: float | None, planned_ms: float, measured_ms: float) -> dict:
    """Whether the planned peak is within ``MEMORY_BAR`` of the measured one (None off GPU) and the
    planned step within ``TIME_BAR`` times the measured one, either way."""
    memory_ok = None if not measured_gb else abs(planned_gb - measured_gb) <= MEMORY_BAR * measured_gb
    time_ok = 1 / TIME_BAR <= measured_ms / planned_ms <= TIME_BAR
    return {"memory_ok": memory_ok, "time_ok": time_ok}


def summary(rows: list[dict]) -> str:
    """One line: how many rows meet each bar."""
    measured = [r for r in rows if r["memory_ok"] is not None]
    memory = f"{sum(r['memory_ok'] for r in measured)}/{len(measured)}" if measured else "not measured"
    return (f"bars met: memory within {MEMORY_BAR:.0%} {memory}, step within {TIME_BAR:g}x "
            f"{sum(r['time_ok'] for r in rows)}/{len(rows)} rows")


def _topology(device_type: str, args, hbm_gb: float | None = None) -> TopologyConfig:
    peak = {"fp32_tflops": args.peak_tflops, "tf32_tflops": args.peak_tflops, "bf16_tflops": args.peak_tflops}
    topology = TopologyConfig(hosts=1, devices_per_host=1, compute_device=device_type, hbm_gb=hbm_gb or 80.0,
                              compute_efficiency=args.efficiency, hbm_bw_gbps=args.hbm_bw_gbps, **peak)
    return topology if args.raw_launch_us is None else topology.for_host(args.raw_launch_us)


def _run(step, device: torch.device, warmup: int, steps: int):
    """(peak GB over one step after warm-up, or None off GPU; per-step ms)."""
    for _ in range(warmup):
        step()
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / GB
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return peak, times


def plot(rows: list[dict], path: Path) -> Path:
    """Two panels: planned vs measured memory (GB) and step time (ms), one point per model and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    fig, (mem, step) = plt.subplots(1, 2, figsize=(12, 5))
    for axis, planned, measured, unit in ((mem, "planned_gb", "measured_peak_gb", "GB"),
                                          (step, "planned_step_ms", "measured_step_ms", "ms")):
        for name in sorted({r["model"] for r in rows}):
            points = [(r[planned], r[measured]) for r in rows if r["model"] == name and r[measured]]
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
        values = [v for r in rows for v in (r[planned], r[measured]) if v]
        if values:
            axis.plot([min(values), max(values)], [min(values), max(values)], "k--", linewidth=0.8, label="measured = planned")
        axis.set_xlabel(f"planned {unit}")
        axis.set_ylabel(f"measured {unit}")
        axis.set_xscale("log")
        axis.set_yscale("log")
    mem.set_title("memory per rank (peak allocated)")
    step.set_title("time per training step")
    step.legend(fontsize=8)
    fig.tight_layout()
    try:
        return write_atomic(path, lambda temp: fig.savefig(temp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for plan_vs_measured.json and .png")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--models", nargs="*", default=None, help="zoo models (default: all)")
    parser.add_argument("--batch-sizes", nargs=3, type=int, default=[64, 256, 1024], help="three batch sizes per rank")
    parser.add_argument("--max-len", type=int, default=50, help="most events per history")
    parser.add_argument("--tiny", action="store_true", help="tiny model widths (the CPU smoke run)")
    parser.add_argument("--peak-tflops", type=float, default=67.0, help="the device's fp32 dense peak (H100 SXM: 67)")
    parser.add_argument("--efficiency", type=float, default=0.4, help="fraction of the peak the plan assumes")
    parser.add_argument("--hbm-bw-gbps", type=float, default=4800.0, help="the device's memory bandwidth (H200: 4800)")
    parser.add_argument("--raw-launch-us", type=float, default=None,
                        help="this host's bare aten op time (calibrate_device.py's raw_launch_us): scales the plan's "
                             "host constants to this machine (default: the reference host's)")
    parser.add_argument("--profile", action="store_true",
                        help="GPU: profile one step per row (device time of its kernels, the largest ones)")
    parser.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--one-process", action="store_true",
                        help="measure every model in this process (default on a GPU: one process per model)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU; use --device cpu --tiny for the smoke run")
    models = args.models or list_models()
    if args.device == "cuda" and not args.one_process and len(models) > 1:
        return _per_model_processes(models, sys.argv[1:] if argv is None else list(argv), args)
    torch.set_float32_matmul_precision(args.matmul_precision)
    ctx = init_distributed()
    try:
        if ctx.device.type != args.device:
            ctx = dataclasses.replace(ctx, device=torch.device(args.device))
        rows = []
        for name in models:
            for b in args.batch_sizes:
                rows.append(measure(name, b, args, ctx))
                _print_row(rows[-1])
    finally:
        teardown(ctx)
    device = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
    return _write(rows, device, args)


def _write(rows: list[dict], device: str, args) -> dict:
    print(summary(rows), flush=True)
    out = Path(args.out)
    result = {"device": device, "peak_tflops": args.peak_tflops, "efficiency": args.efficiency,
              "hbm_bw_gbps": args.hbm_bw_gbps, "raw_launch_us": args.raw_launch_us, "max_len": args.max_len,
              "rows": rows}
    write_json_atomic(out / "plan_vs_measured.json", result, sort_keys=True)
    plot(rows, out / "plan_vs_measured.png")
    return result


def _per_model_processes(models: list[str], argv: list[str], args) -> dict:
    """Runs this script once per model (``--one-process --models NAME``, output under
    ``--out``/models/NAME) and merges their rows."""
    rest = [a for a in _without_option(_without_option(argv, "--models"), "--out")]
    rows, device = [], ""
    for name in models:
        out = Path(args.out) / "models" / name
        subprocess.run([sys.executable, __file__, *rest, "--one-process", "--models", name, "--out", str(out)],
                       check=True)
        result = json.loads((out / "plan_vs_measured.json").read_text())
        rows += result["rows"]
        device = result["device"]
    return _write(rows, device, args)


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its values (up to the next ``--flag``), ``--option=value`` too."""
    kept, skipping = [], False
    for arg in argv:
        if arg == option or arg.startswith(option + "="):
            skipping = arg == option
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        kept.append(arg)
    return kept


def _print_row(r: dict) -> None:
    ratio = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}"
    mark = {True: "ok", False: "MISS", None: "-"}
    print(f"{r['model']:<14} B={r['batch_size']:<6} memory planned {r['planned_gb']:.3f} GB measured/planned {ratio:<5} "
          f"[{mark[r['memory_ok']]}] step planned {r['planned_step_ms']:.2f} ms measured {r['measured_step_ms']:.2f} ms "
          f"[{mark[r['time_ok']]}]", flush=True)


if __name__ == "__main__":
    main()
