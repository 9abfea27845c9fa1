"""Training throughput of the two recipes: examples/s through the data loader and from memory.

    python benchmarks/train_throughput.py --config configs/dlrm/synthetic.yaml --warmup 20 --steps 100 \
        --out runs/bench/throughput-dlrm-1gpu.json [key=value ...]
    torchrun --standalone --nproc_per_node 2 benchmarks/train_throughput.py --config configs/dlrm/synthetic.yaml \
        --warmup 20 --steps 100 --out runs/bench/throughput-dlrm-2gpu.json

The recipe is the one ``recsys train`` runs for the config's model (``RankingRecipe`` for ranking
models such as DLRM, ``RetrievalRecipe`` for retrieval models such as HSTU), built the same way:
same data, planner and sharding, optimizers, DistributedModelParallel and, for ranking, the train
step of ``train.pipeline``. Each timed step is the recipe's own ``train_step``. Two measurements,
one after the other on the same model, each ``--warmup`` untimed steps then ``--steps`` timed ones:

- ``loader``: batches from the recipe's data loader, epoch after epoch, as in training;
- ``in_memory``: up to ``--memory-batches`` batches read and moved to the device before timing,
  then cycled, so the step alone is timed. A slower ``loader`` shows a data-loading bottleneck.

``--profile-steps K`` then runs K more in-memory steps under ``torch.profiler`` and prints the ops
that took the most self time (device time on GPU, host time on CPU); the top ops go into the JSON.

``train.batch_size`` is the batch per rank: the W ranks train ``W * batch_size`` rows a step.
Global examples/s = the examples all ranks trained in the timed steps / the slowest rank's wall time
(``torch.cuda.synchronize()`` on both sides of the timed region on GPU). Step times per step come
from CUDA events on GPU and the host clock on CPU; a step's time is the slowest rank's.

Rank 0 prints a table and writes the JSON (``--out``; the command line, versions, device, world
size, date, global and per-rank numbers). The recipe's run files (config.json, plan.json, logs)
go to a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from recsys.atomic_files import write_json_atomic
from recsys.plots import line_plot, png_beside
from recsys.cli import _quiet_library_noise
from recsys.config import load_config
from recsys.env import check_environment
from recsys.errors import ConfigError, RecsysError
from recsys.models import get_model_spec
from recsys.train.config import TrainConfig
from recsys.train.ranking import RankingRecipe
from recsys.train.retrieval import RetrievalRecipe

PHASES = ("loader", "in_memory")


# ---------------------------------------------------------------------------- recipes
def build_recipe(cfg: TrainConfig) -> RankingRecipe | RetrievalRecipe:
    """The recipe ``recsys train`` runs for ``cfg.model_name`` (as ``recsys.cli`` picks it), set up:
    data, process group, sharded model, optimizers and, for ranking, the train step."""
    if get_model_spec(cfg.model_name).task == "retrieval":
        recipe = RetrievalRecipe(cfg)
        recipe.setup()
    else:
        recipe = RankingRecipe(cfg)
        recipe.setup(write_run_files=False)
    return recipe


def train_step_name(recipe: RankingRecipe | RetrievalRecipe) -> str:
    """Ranking: the resolved ``train.pipeline`` ("sparse_dist" or "none"); retrieval: "plain"."""
    return recipe.pipeline.name if isinstance(recipe, RankingRecipe) else "plain"


def step_function(recipe) -> Callable[[Iterator], None]:
    """``step(batches)``: one optimizer step of the recipe on the next batch(es) of an endless iterator.

    Ranking: the configured train step, which may read up to two batches ahead (sparse-dist
    pipeline) but trains them in the order it took them. Retrieval: the batch moved to the
    device and trained, as ``RetrievalRecipe.train`` does.
    """
    if isinstance(recipe, RankingRecipe):
        def ranking_step(batches: Iterator) -> None:
            if recipe.train_step(batches) is None:
                raise RuntimeError("the batch iterator ran out; it is meant to be endless")
        return ranking_step

    def retrieval_step(batches: Iterator) -> None:
        recipe.train_step(next(batches).to(recipe.ctx.device))
    return retrieval_step


# ---------------------------------------------------------------------------- batches
class BatchLedger:
    """Records the size of every batch handed to the train step, in the order handed out.

    The train steps train batches in the order they take them, so the recipe's step ``n``
    (``recipe.step`` counts them from 0) trained the batch of ``sizes[n]``.
    """

    def __init__(self):
        self.sizes: list[int] = []

    def feed(self, batches: Iterable) -> Iterator:
        for batch in batches:
            self.sizes.append(batch.batch_size)
            yield batch

    def examples(self, first_step: int, end_step: int) -> int:
        """Rows trained by steps ``first_step .. end_step - 1``."""
        return sum(self.sizes[first_step:end_step])


def loader_epochs(loader) -> Iterator:
    """The loader's batches epoch after epoch (epochs 0, 1, 2, ...), without end."""
    if len(loader) == 0:
        raise ConfigError(
            f"the data loader yields no batch: the training split has fewer rows than one global batch "
            f"(train.batch_size={loader.sampler.batch_size}; with several ranks the last, partial batch is "
            "dropped); lower train.batch_size or use more data"
        )
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def batches_in_memory(loader, count: int, device: torch.device) -> list:
    """The loader's first ``count`` batches (from epoch 0 on), already on ``device``."""
    batches = loader_epochs(loader)
    resident = [next(batches).to(device) for _ in range(count)]
    batches.close()
    return resident


def cycle(batches: list) -> Iterator:
    while True:
        yield from batches


# ---------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """One rank's timed steps: wall seconds, rows trained, and each step's milliseconds."""

    seconds: float
    examples: int
    step_ms: list[float]


class StepClock:
    """Per-step times without waiting for the device between steps: CUDA events on the current
    stream on GPU (read once at the end), the host clock on CPU (where every op is synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_ms(self) -> list[float]:
        """Milliseconds between consecutive marks (call after the device finished)."""
        pairs = zip(self.marks, self.marks[1:])
        if self.cuda:
            return [start.elapsed_time(end) for start, end in pairs]
        return [(end - start) * 1e3 for start, end in pairs]


def wait_for_every_rank(device: torch.device, world_size: int) -> None:
    """Device idle here, and every rank at this point, before a clock starts or stops."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world_size > 1:
        dist.all_reduce(torch.zeros(1, device=device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def time_steps(recipe, batches: Iterator, ledger: BatchLedger, warmup: int, steps: int) -> Timing:
    """``warmup`` untimed steps, then ``steps`` timed ones, of the recipe on ``batches``."""
    step, device, world_size = step_function(recipe), recipe.ctx.device, recipe.ctx.world_size
    for _ in range(warmup):
        step(batches)
    wait_for_every_rank(device, world_size)
    first_step, clock = recipe.step, StepClock(device)
    started = time.perf_counter()
    clock.mark()
    for _ in range(steps):
        step(batches)
        clock.mark()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return Timing(seconds, ledger.examples(first_step, recipe.step), clock.step_ms())


def measure(recipe, warmup: int, steps: int, memory_batches: int) -> dict[str, Timing]:
    """This rank's ``loader`` and ``in_memory`` timings (module docstring)."""
    ledger = BatchLedger()
    from_loader = ledger.feed(loader_epochs(recipe.loader))
    timings = {"loader": time_steps(recipe, from_loader, ledger, warmup, steps)}
    from_loader.close()  # batches the sparse-dist pipeline read ahead stay with it and train first
    resident = batches_in_memory(recipe.loader, min(memory_batches, warmup + steps), recipe.ctx.device)
    timings["in_memory"] = time_steps(recipe, ledger.feed(cycle(resident)), ledger, warmup, steps)
    return timings


def profile_steps(recipe, steps: int, memory_batches: int, top: int = 15) -> tuple[str, list[dict]]:
    """``steps`` in-memory steps under ``torch.profiler`` -> (printable table, top ops by self time).

    Ops and kernels only: annotated ranges (``record_function``, e.g. TorchRec's ``[lookup]`` and
    DDP's forward) overlap the ops they hold and are left out. Self time is device time on GPU,
    host time on CPU. Every rank runs the steps (they hold collectives); each returns its own view.
    """
    device = recipe.ctx.device
    step = step_function(recipe)
    batches = cycle(batches_in_memory(recipe.loader, min(memory_batches, steps), device))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = [e for e in profiler.key_averages() if not getattr(e, "is_user_annotation", False)]
    ops = sorted(ops, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    rows = [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0.0) / 1e3,
             "self_cpu_ms": e.self_cpu_time_total / 1e3} for e in ops]
    where = "device" if device.type == "cuda" else "CPU"
    host = device.type == "cuda"  # a second column: the host time of the same ops
    lines = [f"top ops of {steps} profiled steps by self {where} time",
             f"{'op':<60}{'calls':>8}{'self ' + where + ' ms':>16}" + (f"{'self CPU ms':>13}" if host else "")]
    lines += [f"{r['op'][:59]:<60}{r['calls']:>8}{r['self_ms']:>16.3f}" + (f"{r['self_cpu_ms']:>13.3f}" if host else "")
              for r in rows]
    return "\n".join(lines), rows


# ---------------------------------------------------------------------------- summary
def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise_phase(per_rank: list[Timing], steps: int) -> dict:
    """Global numbers of one phase from every rank's timing: all examples over the slowest wall
    time; each step's time is the slowest rank's."""
    seconds = max(t.seconds for t in per_rank)
    examples = sum(t.examples for t in per_rank)
    slowest_step = [max(ms) for ms in zip(*(t.step_ms for t in per_rank))]
    return {
        "seconds": seconds,
        "examples": examples,
        "examples_per_s": examples / seconds,
        "step_ms_mean": 1e3 * seconds / steps,
        "step_ms_p50": percentile(slowest_step, 50),
        "step_ms_p90": percentile(slowest_step, 90),
        "per_rank": [
            {
                "rank": rank,
                "seconds": t.seconds,
                "examples": t.examples,
                "examples_per_s": t.examples / t.seconds,
                "batch_size_trained": t.examples / steps,
                "step_ms_mean": 1e3 * t.seconds / steps,
                "step_ms_p50": percentile(t.step_ms, 50),
                "step_ms_p90": percentile(t.step_ms, 90),
            }
            for rank, t in enumerate(per_rank)
        ],
    }


def gather(timings: dict[str, Timing], world_size: int) -> list[dict[str, Timing]]:
    """Every rank's timings, on every rank (rank order)."""
    if world_size == 1:
        return [timings]
    parts: list = [None] * world_size
    dist.all_gather_object(parts, timings)
    return parts


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {os.cpu_count()} cores"


def command_line() -> str:
    """This run's command, with ``torchrun --nproc_per_node N`` in front when torchrun launched it."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        launcher = ["torchrun", "--nproc_per_node", os.environ["LOCAL_WORLD_SIZE"]]
    else:
        launcher = ["python"]
    return shlex.join([*launcher, *sys.argv])


def build_report(args, cfg: TrainConfig, recipe, per_rank: list[dict[str, Timing]]) -> dict:
    ctx = recipe.ctx
    phases = {phase: summarise_phase([rank[phase] for rank in per_rank], args.steps) for phase in PHASES}
    versions = check_environment().versions
    return {
        "command": command_line(),
        "config": args.config,
        "overrides": args.overrides,
        "model": cfg.model_name,
        "task": get_model_spec(cfg.model_name).task,
        "train_step": train_step_name(recipe),
        "device": device_name(ctx.device),
        "device_type": ctx.device.type,
        "backend": ctx.backend,
        "world_size": ctx.world_size,
        "torch_threads": torch.get_num_threads(),
        "global_batch_size": cfg.train.batch_size * ctx.world_size,
        "batch_per_rank": cfg.train.batch_size,
        "batch_per_rank_trained": phases["loader"]["examples"] / (args.steps * ctx.world_size),
        "num_workers": cfg.data.num_workers,
        "warmup": args.warmup,
        "steps": args.steps,
        "memory_batches": min(args.memory_batches, args.warmup + args.steps),
        "versions": {name: versions.get(name) for name in ("python", "torch", "torchrec", "fbgemm", "triton")},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **phases,
    }


def format_table(reports: list[dict]) -> str:
    """One row per report: who ran where, then examples/s of both phases and the step times (ms)."""
    header = (f"{'config':<26}{'model':<14}{'device':<30}{'world':>6}{'batch/rank':>11}"
              f"{'loader ex/s':>14}{'in-mem ex/s':>14}{'loader ms':>11}{'in-mem ms':>11}{'p50':>8}{'p90':>8}")
    lines = [header, "-" * len(header)]
    for r in reports:
        loader, memory = r["loader"], r["in_memory"]
        lines.append(
            f"{Path(r['config']).stem:<26}{r['model']:<14}{r['device'][:29]:<30}"
            f"{r['world_size']:>6}{r['batch_per_rank']:>11.0f}"
            f"{loader['examples_per_s']:>14,.0f}{memory['examples_per_s']:>14,.0f}"
            f"{loader['step_ms_mean']:>11.2f}{memory['step_ms_mean']:>11.2f}"
            f"{memory['step_ms_p50']:>8.2f}{memory['step_ms_p90']:>8.2f}"
        )
    lines.append("examples/s: all ranks' examples / the slowest rank's wall time (retrieval: sequences); "
                 "ms: mean step; p50/p90: in-memory step")
    return "\n".join(lines)


def plot(reports: list[dict], path: str | Path) -> Path:
    """Throughput vs the batch per rank, one line per (config, world size, phase): the reports
    of several runs (e.g. ``--out`` files of a batch-size sweep) on one figure."""
    series: dict[str, list] = {}
    for r in reports:
        for phase in PHASES:
            name = f"{Path(r['config']).stem}, {r['world_size']} x {r['device_type']}, {phase}"
            series.setdefault(name, []).append((r["batch_per_rank"], r[phase]["examples_per_s"]))
    return line_plot(series, path, "batch per rank", "examples/s (whole job)", log_x=True,
                     title="training throughput")


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="training YAML, as for `recsys train`")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before each measurement")
    parser.add_argument("--steps", type=int, default=100, help="timed steps of each measurement")
    parser.add_argument("--memory-batches", type=int, default=32,
                        help="distinct batches kept on the device for the in-memory measurement (cycled)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="then profile this many in-memory steps and print the top ops (0: no profile)")
    parser.add_argument("--out", required=True, help="JSON file to write (rank 0)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of --config, e.g. train.batch_size=4096")
    args = parser.parse_args(argv)
    for name in ("warmup", "steps", "memory_batches", "profile_steps"):
        minimum = 0 if name in ("warmup", "profile_steps") else 1
        if getattr(args, name) < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(args, name)}")
    return args


def run(args: argparse.Namespace) -> dict | None:
    """Builds the recipe, measures both phases, and on rank 0 prints the table and writes ``--out``
    (returning the report; None on other ranks)."""
    with tempfile.TemporaryDirectory(prefix="train_throughput-") as run_dir:
        overrides = [*args.overrides, f"output_dir={run_dir}"]
        cfg = load_config(TrainConfig, args.config, overrides)
        recipe = build_recipe(cfg)
        try:
            per_rank = gather(measure(recipe, args.warmup, args.steps, args.memory_batches), recipe.ctx.world_size)
            report = build_report(args, cfg, recipe, per_rank) if recipe.ctx.is_main else None
            if args.profile_steps:
                table, top_ops = profile_steps(recipe, args.profile_steps, args.memory_batches)
                if report is not None:
                    print(table)
                    report["profile"] = {"steps": args.profile_steps, "top_ops": top_ops}
        finally:
            recipe.cleanup()
    if report is not None:
        print(format_table([report]))
        write_json_atomic(args.out, report)
        print(f"wrote {args.out} and {plot([report], png_beside(args.out))}")
    return report


def main(argv: list[str] | None = None) -> int:
    _quiet_library_noise(verbose=False)
    try:
        run(parse_args(argv))
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
