"""Sharding-plan dry run: what TorchRec's planner would do on a cluster, computed on this machine.

The model is built on the meta device (a 10^9-row table costs no memory), the planner plans for
``topology.world_size`` ranks without a process group, and a :class:`PlanReport` collects what it
chose and what it expects:

- per table: sharding type, compute kernel, ranks, shards, estimated perf (ms) and storage (GB);
- per rank: memory by part against capacity: embedding shards, dense model (parameters,
  gradients, optimizer state), activations kept for backward, input KJTs
  (:mod:`recsys.distributed.dense_estimate`), the step's transients at its peak (the peak is the
  max over the forward, backward and optimizer phases) and fixed allocations (cuBLAS workspaces);
  all but the tables are the planner's storage reservation, so tables go only where they leave
  room. The estimated step time is max(host time, device time) + per-step fixed host time + the
  dense gradient all-reduce: host time = the ops a step dispatches
  (:mod:`recsys.distributed.step_ops`) x ``topology.launch_overhead_us``; device time = embedding
  lookups (fwd/bwd compute + comms: the planner's ``Perf.total``) + dense compute (FLOPs at
  ``topology.compute_efficiency`` of the device's peak) + memory traffic (activation bytes over
  ``topology.hbm_bw_gbps``) + atomic scatter-adds into small tables (the HSTU relative-bias
  gradient, ``topology.scatter_add_ns`` each);
- the largest batch size per rank that fits this plan;
- imbalance across ranks: max/mean and coefficient of variation (std/mean) of perf and memory;
- TorchRec's own planner stats table (``EmbeddingStats``), verbatim.

A job that cannot fit (activations, dense model or tables beyond a rank's memory) is refused with
:class:`PlanDoesNotFit`: the numbers per part and the knobs that change them, instead of a plan.

``PlanReport.write(out_dir)`` writes ``plan.json`` (the source, holding the loadable plan under
``"plan"``), ``plan.md`` and ``plan_ranks.png``.

Example::

    report = plan_dry_run("dlrm", {"t_item_id": 10**9, "t_user_id": 10**8},
                          TopologyConfig(hosts=8, devices_per_host=8), batch_size=4096, embedding_dim=128)
    report.write("runs/plan")
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.stats import EmbeddingStats
from torchrec.distributed.planner.types import PlannerError, Stats
from torchrec.distributed.types import ShardingPlan

from recsys.data.features import FeatureSpec
from recsys.atomic_files import write_atomic, write_json_atomic
from recsys.distributed.dense_estimate import DenseEstimate, Workload, estimate_dense, sequence_ids_per_row
from recsys.distributed.dense_reservation import dense_reservation
from recsys.distributed.plan_budget import MemoryBudget, does_not_fit_message, largest_batch
from recsys.distributed.plan_io import model_tables, plan_document
from recsys.distributed.sequence_lengths import LengthDistribution
from recsys.distributed.sharding import ShardingConfig, default_sharders, planner_constraints
from recsys.distributed.topology import GB, TopologyConfig
from recsys.errors import ConfigError

_PERF_FIELDS = ("fwd_compute", "fwd_comms", "bwd_compute", "bwd_comms")
_REFUSED_ON_CPU = ("row_wise", "table_row_wise")


@dataclass
class TableReport:
    """One table's placement and the planner's estimates (perf in ms per step, storage in GB)."""

    module: str
    name: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    ranks: List[int]
    shards: List[Dict[str, Any]]
    hbm_gb: float
    ddr_gb: float
    perf_ms: Dict[str, float]


@dataclass
class RankReport:
    """One rank's memory (GB) against capacity and its estimated time per step (ms).

    ``memory_gb`` splits the training memory (HBM on cuda, DDR on cpu) into tables, dense,
    activations and inputs; ``perf_ms`` holds the planner's embedding estimates plus
    ``dense_compute``, ``dense_allreduce`` and ``step`` (the rank's whole step).
    """

    rank: int
    host: int
    hbm_used_gb: float
    hbm_cap_gb: float
    ddr_used_gb: float
    ddr_cap_gb: float
    perf_ms: Dict[str, float]
    memory_gb: Dict[str, float] = field(default_factory=dict)


class PlanDoesNotFit(ConfigError):
    """The job cannot train on this topology at this batch size; the message has the numbers and knobs."""


@dataclass
class DenseReport:
    """The dense estimate of one rank's step (GB, FLOPs, ms) and the lengths it assumed."""

    parameter_gb: float
    gradient_gb: float
    optimizer_gb: float
    activation_gb: float
    activation_parts_gb: Dict[str, float]
    input_gb: float
    flops: float
    flop_parts: Dict[str, float]
    peak_tflops: float
    compute_efficiency: float
    compute_ms: float
    overhead_ms: float
    allreduce_ms: float
    max_length: int
    mean_length: float
    transient_gb: float = 0.0
    fixed_gb: float = 0.0
    peak_phase: str = ""
    ops_per_step: float = 0.0
    memory_ms: float = 0.0
    step_fixed_ms: float = 0.0
    scatter_ms: float = 0.0


@dataclass
class PlanReport:
    """The planner's plan for one model on one topology, with per-table and per-rank estimates."""

    model: str
    model_overrides: Dict[str, Any]
    topology: TopologyConfig
    batch_size: int
    tables: List[TableReport]
    ranks: List[RankReport]
    imbalance: Dict[str, Dict[str, Optional[float]]]
    reserved_gb: Dict[str, float]
    planner_seconds: float
    dry_run_seconds: float
    plan: ShardingPlan = field(repr=False)
    dense: Optional[DenseReport] = None
    step_ms: Dict[str, float] = field(default_factory=dict)
    largest_batch_size: int = 0
    torchrec_stats: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: everything above, plus the loadable plan under ``"plan"``."""
        return {
            "model": self.model,
            "model_overrides": self.model_overrides,
            "topology": asdict(self.topology),
            "world_size": self.topology.world_size,
            "batch_size_per_rank": self.batch_size,
            "tables": [asdict(t) for t in self.tables],
            "ranks": [asdict(r) for r in self.ranks],
            "imbalance": self.imbalance,
            "reserved_gb_per_rank": self.reserved_gb,
            "dense": asdict(self.dense) if self.dense else None,
            "step_ms": self.step_ms,
            "largest_batch_size_per_rank": self.largest_batch_size,
            "torchrec_stats": self.torchrec_stats,
            "planner_seconds": round(self.planner_seconds, 3),
            "dry_run_seconds": round(self.dry_run_seconds, 3),
            "plan": plan_document(self.plan, self.topology.world_size, self.topology.compute_device),
        }

    def to_markdown(self) -> str:
        return format_markdown(self)

    def write(self, out_dir: str | Path) -> Dict[str, Path]:
        """Writes plan.json, plan.md and plan_ranks.png into `out_dir` (each atomically)."""
        out = Path(out_dir)
        paths = {"json": out / "plan.json", "markdown": out / "plan.md", "png": out / "plan_ranks.png"}
        write_json_atomic(paths["json"], self.to_dict(), sort_keys=True)
        markdown = self.to_markdown()
        write_atomic(paths["markdown"], lambda temp: temp.write_text(markdown))
        plot_ranks(self, paths["png"])
        return paths


class _RecordingStats(Stats):
    """Receives the planner's chosen sharding options and reservation instead of logging them."""

    def __init__(self) -> None:
        self.best_plan: list = []
        self.storage_reservation = None
        self.run_time = 0.0

    def log(self, sharding_plan, topology, batch_size, storage_reservation, num_proposals, num_plans,
            run_time, best_plan, **kwargs) -> None:
        self.best_plan = list(best_plan)
        self.storage_reservation = storage_reservation
        self.run_time = float(run_time)


def feature_spec_with_rows(spec: FeatureSpec, table_rows: Mapping[str, int]) -> FeatureSpec:
    """`spec` with table sizes replaced: ``{"t_item_id": 10**9, "t_user_id": 10**8, "t_item_topic": 64}``.

    Tables are named ``t_<feature>`` (see ``recsys.models.dlrm.embedding_bag_configs``); the item
    table's size also sizes the ``history_*`` features that share it.
    """
    attributes = dict(spec.item_attributes)
    updates: Dict[str, Any] = {}
    known = ["t_user_id", "t_item_id", *[f"t_item_{name}" for name in attributes]]
    for table, rows in table_rows.items():
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"table rows for {table!r} must be an integer >= 1, got {rows!r}")
        if table == "t_user_id":
            updates["num_users"] = rows
        elif table == "t_item_id":
            updates["num_items"] = rows
        elif table.startswith("t_item_") and table[len("t_item_"):] in attributes:
            attributes[table[len("t_item_"):]] = rows
        else:
            raise ConfigError(f"no table {table!r} can be resized; resizable tables: {known}")
    return replace(spec, item_attributes=attributes, **updates)


def synthetic_feature_spec(synthetic, max_history: int = 50) -> FeatureSpec:
    """The FeatureSpec the synthetic generator's log would give, without generating it.

    Args:
        synthetic: a ``SyntheticConfig`` (items carry the attributes ``topic`` and ``second_topic``).
        max_history: items per ``history_<action>`` feature.
    """
    return FeatureSpec(
        num_users=synthetic.num_users,
        num_items=synthetic.num_items,
        item_attributes={"topic": synthetic.num_topics, "second_topic": synthetic.num_topics + 1},
        content_dim=synthetic.content_dim,
        max_history=max_history,
    )


def feature_spec_for_plan(data_cfg) -> FeatureSpec:
    """The FeatureSpec of a run's data section: computed for synthetic data, read from the log otherwise."""
    if data_cfg.source == "synthetic":
        return synthetic_feature_spec(data_cfg.synthetic, data_cfg.max_history)
    from recsys.data.pipeline import load_events

    return FeatureSpec.from_log(load_events(data_cfg), max_history=data_cfg.max_history)


def _check_cpu_constraints(topology: TopologyConfig, constraints: ShardingConfig) -> None:
    if topology.compute_device != "cpu":
        return
    for table, constraint in constraints.tables.items():
        refused = set(constraint.get("sharding_types", [])) & set(_REFUSED_ON_CPU)
        if refused:
            raise ConfigError(
                f"sharding.tables.{table}: the planner cannot estimate {sorted(refused)} on a cpu topology "
                "(training places such tables by hand); dry-run it with topology.compute_device=cuda"
            )


def plan_dry_run(
    model_name: str,
    features: FeatureSpec | Mapping[str, int],
    topology: TopologyConfig,
    constraints: ShardingConfig | None = None,
    batch_size: int = 512,
    lengths: LengthDistribution | None = None,
    optimizer: str = "adam",
    matmul_precision: str = "highest",
    lifelong_rows: Mapping[str, float] | None = None,
    ops_per_step: float | None = None,
    **model_overrides: Any,
) -> PlanReport:
    """Plans `model_name`'s tables for `topology.world_size` ranks on this machine, around the
    dense model and the activations of a `batch_size` step.

    Args:
        model_name: a zoo model, e.g. "dlrm".
        features: the data's FeatureSpec, or table rows applied to the zoo's default spec
            (``{"t_item_id": 10**9}``, see :func:`feature_spec_with_rows`).
        topology: the cluster to plan for.
        constraints: per-table sharding constraints (a run's ``sharding`` section).
        batch_size: examples per rank per step (a run's ``train.batch_size``).
        lengths: per-row sequence lengths of the data (see :mod:`recsys.distributed.plan_lengths`);
            None = no sequences (the sequence models' activations are then not counted).
        optimizer: the dense optimizer (``optim.dense.name``).
        matmul_precision: ``train.matmul_precision``: picks the device's peak rate.
        lifelong_rows: TransAct V2: ``{"impressions_per_row": ..., "next_action_pairs_per_row": ...}``.
        ops_per_step: aten ops one step dispatches (its host time); None = counted by running the
            model's step on CPU at a tiny batch (:func:`~recsys.distributed.step_ops.step_ops`).
        **model_overrides: fields of the model's config, e.g. ``embedding_dim=128``.

    Raises:
        PlanDoesNotFit: the dense model, activations, inputs and tables exceed a rank's memory.
    """
    from recsys.models import default_feature_spec, get_model

    start = time.perf_counter()
    constraints = constraints or ShardingConfig()
    _check_cpu_constraints(topology, constraints)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"train.batch_size (examples per rank per step) must be an integer >= 1, got {batch_size!r}")
    spec = features if isinstance(features, FeatureSpec) else feature_spec_with_rows(default_feature_spec(), features)
    model = get_model(model_name, feature_spec=spec, device=torch.device("meta"), **model_overrides)
    lengths = lengths or LengthDistribution.fixed(0)

    def workload(rows: int) -> Workload:
        return Workload(rows, lengths, num_items=spec.num_items, fused_attention=topology.compute_device == "cuda",
                        accelerator=topology.compute_device == "cuda",
                        **dict(lifelong_rows or {}))

    dense = estimate_dense(model, workload(batch_size), optimizer)
    torch_topology = topology.to_topology()
    base_constraints = planner_constraints(model, constraints, topology.compute_device == "cpu")

    def inputs_at(rows: int) -> float:
        """The input KJTs' reservation at ``rows`` per rank (the ids per row of the sequence
        tables, with the retrieval loss's distinct samples, change with the batch)."""
        pooled = _with_sequence_pooling(model, base_constraints, sequence_ids_per_row(model, workload(rows)))
        return _input_bytes(model, rows, pooled)

    planner_constraints_ = _with_sequence_pooling(model, base_constraints, sequence_ids_per_row(model, workload(batch_size)))
    inputs = _input_bytes(model, batch_size, planner_constraints_)
    budget = MemoryBudget(topology.memory_gb * GB, topology.headroom, dense.dense_bytes, dense.activation_bytes, inputs,
                          tables=_table_bytes(model) / topology.world_size,  # the least any placement needs
                          transient=dense.transient_bytes, fixed=topology.fixed_bytes)
    refuse = _refusal(model_name, model, topology, batch_size, lengths, dense, budget, workload, optimizer, inputs_at)
    if not budget.fits:
        raise refuse(budget)
    stats, torchrec_stats = _RecordingStats(), EmbeddingStats()
    planner = EmbeddingShardingPlanner(
        topology=torch_topology,
        batch_size=batch_size,
        storage_reservation=dense_reservation(dense, topology.headroom, topology.fixed_bytes),
        constraints=planner_constraints_,
        stats=[torchrec_stats, stats],
    )
    try:
        plan = planner.plan(model, default_sharders())
    except PlannerError:  # the tables do not fit in what the reservation leaves
        raise refuse(budget) from None
    tables = [_table_report(option) for option in stats.best_plan]
    if ops_per_step is None:
        from recsys.distributed.step_ops import step_ops

        ops_per_step = step_ops(model_name, model_overrides, lengths.max, fused_rnn=topology.compute_device == "cuda")
    dense_report = _dense_report(dense, inputs, topology, matmul_precision, lengths, ops_per_step)
    ranks, reserved = _rank_reports(stats, torch_topology, topology, dense_report)
    fullest = max(r.memory_gb["tables"] for r in ranks) * GB
    fitting = largest_batch(
        lambda rows: estimate_dense(model, workload(rows), optimizer).peak_bytes + topology.fixed_bytes
        + inputs_at(rows) + fullest,
        budget.usable,
    )
    return PlanReport(
        model=model_name,
        model_overrides=dict(model_overrides),
        topology=topology,
        batch_size=batch_size,
        tables=sorted(tables, key=lambda t: (t.module, t.name)),
        ranks=ranks,
        imbalance=_imbalance(ranks),
        reserved_gb=reserved,
        planner_seconds=stats.run_time,
        dry_run_seconds=time.perf_counter() - start,
        plan=plan,
        dense=dense_report,
        step_ms=_step_ms(ranks),
        largest_batch_size=fitting,
        torchrec_stats=list(getattr(torchrec_stats, "_stats_table", [])),
    )


def _with_sequence_pooling(model, constraints: Dict, ids_per_row: float) -> Dict:
    """``constraints`` with the pooling factor of every sequence (EmbeddingCollection) table set to
    the ids a row looks up (TorchRec's default of 1 would plan lookups, comms and input memory for
    one token per row)."""
    from torchrec.distributed.planner import ParameterConstraints
    from torchrec.modules.embedding_modules import EmbeddingCollection

    constraints = dict(constraints)
    for module in model.modules():
        if isinstance(module, EmbeddingCollection):
            for config in module.embedding_configs():
                current = constraints.get(config.name) or ParameterConstraints()
                constraints[config.name] = replace(current, pooling_factors=[ids_per_row] * len(config.feature_names))
    return constraints


def _table_bytes(model) -> float:
    """All embedding tables' weights plus a row-wise optimizer state (float32), over every rank."""
    return sum(4.0 * rows * (dim + 1) for tables in model_tables(model).values() for rows, dim in tables.values())


def _input_bytes(model, batch_size: int, constraints) -> float:
    """TorchRec's per-rank reservation for input KJTs at this batch (2 pipelined batches x 10 copies)."""
    from torchrec.distributed.planner import storage_reservations as sr

    batch_inputs, _ = sr._get_batch_inputs_and_shardable_parameters(model, default_sharders(), batch_size, constraints)
    return float(math.ceil(sum(batch_inputs) * sr.BIGINT_DTYPE) * 20)


def _dense_report(dense: DenseEstimate, inputs: float, topology: TopologyConfig, precision: str,
                  lengths: LengthDistribution, ops_per_step: float = 0.0) -> DenseReport:
    peak = topology.peak_tflops(precision)
    bandwidth = (topology.inter_host_bw_gbps if topology.hosts > 1 else topology.intra_host_bw_gbps) * GB
    world = topology.world_size
    allreduce = 2 * (world - 1) / world * dense.gradient_bytes / bandwidth * 1e3 if world > 1 else 0.0  # ring
    return DenseReport(
        parameter_gb=dense.parameter_bytes / GB,
        gradient_gb=dense.gradient_bytes / GB,
        optimizer_gb=dense.optimizer_bytes / GB,
        activation_gb=dense.activation_bytes / GB,
        activation_parts_gb={name: value / GB for name, value in dense.activation_parts.items()},
        input_gb=inputs / GB,
        flops=dense.flops,
        flop_parts=dict(dense.flop_parts),
        peak_tflops=peak,
        compute_efficiency=topology.compute_efficiency,
        compute_ms=dense.compute_ms(peak, topology.compute_efficiency),
        overhead_ms=ops_per_step * topology.launch_overhead_us / 1e3,
        allreduce_ms=allreduce,
        max_length=lengths.max,
        mean_length=lengths.mean,
        transient_gb=dense.transient_bytes / GB,
        fixed_gb=topology.fixed_bytes / GB,
        peak_phase=max(dense.phase_bytes, key=dense.phase_bytes.get),
        ops_per_step=ops_per_step,
        # activations written in forward and read in backward, their gradients written and read
        memory_ms=4 * (dense.activation_bytes + dense.backward_transient_bytes) / (topology.hbm_bw_gbps * GB) * 1e3,
        step_fixed_ms=topology.step_fixed_ms,
        scatter_ms=dense.scatter_ms(topology.scatter_add_ns),
    )


def _step_ms(ranks: List[RankReport]) -> Dict[str, float]:
    """The step of the slowest rank, by part (ranks wait for each other at every collective)."""
    slowest = max(ranks, key=lambda r: r.perf_ms["step"])
    return {
        "embedding": slowest.perf_ms["total"],
        "dense_compute": slowest.perf_ms["dense_compute"],
        "memory_traffic": slowest.perf_ms["memory_traffic"],
        "table_scatter": slowest.perf_ms["table_scatter"],
        "device": slowest.perf_ms["device"],
        "framework_overhead": slowest.perf_ms["framework_overhead"],
        "step_fixed": slowest.perf_ms["step_fixed"],
        "dense_allreduce": slowest.perf_ms["dense_allreduce"],
        "total": slowest.perf_ms["step"],
    }


def _refusal(model_name, model, topology, batch_size, lengths, dense, budget, workload, optimizer, inputs_at):
    """A function: budget -> PlanDoesNotFit naming the numbers and the knobs; ``inputs_at(rows)``:
    the input reservation at ``rows`` per rank."""
    memory = "HBM" if topology.compute_device == "cuda" else "DDR"

    def refuse(state: MemoryBudget) -> PlanDoesNotFit:
        fitting = largest_batch(
            lambda rows: estimate_dense(model, workload(rows), optimizer).peak_bytes + state.fixed
            + inputs_at(rows) + state.tables,
            state.usable,
        )
        message = does_not_fit_message(
            model_name, topology.world_size, memory, batch_size, state, dense.activation_parts, fitting,
            lengths.max, lengths.mean, _knobs(model, dense, lengths, workload(batch_size), optimizer, topology),
        )
        return PlanDoesNotFit(message)

    return refuse


def _knobs(model, dense, lengths, work, optimizer, topology) -> List[str]:
    knobs = []
    if lengths.max > 1:
        half = LengthDistribution(tuple(max(v // 2, 1) for v in lengths.lengths))
        shorter = estimate_dense(model, replace(work, lengths=half), optimizer).activation_bytes
        knobs.append(
            f"shorter sequences: at most {max(lengths.max // 2, 1)} tokens (data.max_sequence, the model's "
            f"max_seq_len / max_sequence) need {shorter / GB:.1f} GB of activations instead of {dense.activation_bytes / GB:.1f}"
        )
    layers = _layer_count(model)
    if layers > 1:
        knobs.append(
            f"activation checkpointing (recompute each of the {layers} sequence layers in backward; not in the recipes "
            f"yet): keeps about 1/{layers} of the layers' activations plus each layer's input"
        )
    left = topology.memory_gb * GB * (1 - topology.headroom) - dense.peak_bytes - topology.fixed_bytes
    tables = _table_bytes(model)
    spread = (f"the tables ({tables / GB:.1f} GB with optimizer state) need at least "
              f"{math.ceil(tables / left)} ranks at this batch" if left > 0 else "no rank count helps at this batch")
    knobs.append(
        "more ranks: dense and activation memory per rank stay the same (data parallel); more ranks only spread the "
        f"embedding tables (now {topology.world_size} ranks; {spread})"
    )
    knobs.append(
        "CPU offload of tables: sharding.tables.<table>.compute_kernels=[fused_uvm_caching] keeps a table in host "
        "memory behind an HBM cache"
    )
    return knobs


def _layer_count(model) -> int:
    encoders = [m for m in model.modules() if hasattr(m, "layers") and isinstance(getattr(m, "layers"), torch.nn.ModuleList)]
    return sum(len(e.layers) for e in encoders)


def _perf_dict(perf) -> Dict[str, float]:
    values = {name: float(getattr(perf, name)) for name in _PERF_FIELDS}
    values["total"] = float(perf.total)
    return values


def _table_report(option) -> TableReport:
    rows, dim = option.tensor.shape
    perf = {name: 0.0 for name in (*_PERF_FIELDS, "total")}
    hbm = ddr = 0
    for shard in option.shards:
        for name, value in _perf_dict(shard.perf).items():
            perf[name] += value
        hbm, ddr = hbm + shard.storage.hbm, ddr + shard.storage.ddr
    return TableReport(
        module=option.path,
        name=option.name,
        rows=int(rows),
        dim=int(dim),
        sharding_type=option.sharding_type,
        compute_kernel=option.compute_kernel,
        ranks=[int(shard.rank) for shard in option.shards],
        shards=[{"rank": int(s.rank), "offsets": list(s.offset), "sizes": list(s.size)} for s in option.shards],
        hbm_gb=hbm / GB,
        ddr_gb=ddr / GB,
        perf_ms=perf,
    )


def _reservation(storage_reservation) -> Dict[str, float]:
    """Per-rank memory the planner holds back for the dense model, activations and input KJTs (GB)."""
    reserved = {"hbm": 0.0, "ddr": 0.0}
    for name in ("_dense_storage", "_kjt_storage"):
        storage = getattr(storage_reservation, name, None)
        if storage is not None:
            reserved["hbm"] += storage.hbm / GB
            reserved["ddr"] += storage.ddr / GB
    return reserved


def _rank_reports(stats: _RecordingStats, torch_topology, topology: TopologyConfig, dense: DenseReport):
    world_size = torch_topology.world_size
    hbm, ddr = [0] * world_size, [0] * world_size
    perf = [{name: 0.0 for name in (*_PERF_FIELDS, "total")} for _ in range(world_size)]
    for option in stats.best_plan:
        for shard in option.shards:
            hbm[shard.rank] += shard.storage.hbm
            ddr[shard.rank] += shard.storage.ddr
            for name, value in _perf_dict(shard.perf).items():
                perf[shard.rank][name] += value
    reserved = _reservation(stats.storage_reservation)
    on_device = topology.compute_device == "cuda"
    ranks = []
    for rank, device in enumerate(torch_topology.devices):
        tables = (hbm[rank] if on_device else ddr[rank]) / GB
        memory = {"tables": tables, "dense": dense.parameter_gb + dense.gradient_gb + dense.optimizer_gb,
                  "activations": dense.activation_gb, "transient": dense.transient_gb, "fixed": dense.fixed_gb,
                  "inputs": dense.input_gb}
        memory["total"] = sum(memory.values())
        times = {**perf[rank], "dense_compute": dense.compute_ms, "memory_traffic": dense.memory_ms,
                 "table_scatter": dense.scatter_ms,
                 "framework_overhead": dense.overhead_ms, "step_fixed": dense.step_fixed_ms,
                 "dense_allreduce": dense.allreduce_ms}
        times["device"] = times["total"] + dense.compute_ms + dense.memory_ms + dense.scatter_ms
        times["step"] = max(times["device"], dense.overhead_ms) + dense.step_fixed_ms + dense.allreduce_ms
        ranks.append(RankReport(
            rank=rank,
            host=rank // topology.devices_per_host,
            hbm_used_gb=hbm[rank] / GB + reserved["hbm"],
            hbm_cap_gb=device.storage.hbm / GB,
            ddr_used_gb=ddr[rank] / GB + reserved["ddr"],
            ddr_cap_gb=device.storage.ddr / GB,
            perf_ms=times,
            memory_gb=memory,
        ))
    return ranks, reserved


def imbalance_stats(values: List[float]) -> Dict[str, Optional[float]]:
    """max, mean, max/mean and coefficient of variation (population std / mean) of per-rank values.

    The ratios are None when the mean is 0 (nothing placed of that kind).
    """
    mean = statistics.fmean(values)
    top = max(values)
    if mean == 0:
        return {"max": top, "mean": mean, "max_over_mean": None, "cv": None}
    return {"max": top, "mean": mean, "max_over_mean": top / mean, "cv": statistics.pstdev(values) / mean}


def _imbalance(ranks: List[RankReport]) -> Dict[str, Dict[str, Optional[float]]]:
    return {
        "perf_ms": imbalance_stats([r.perf_ms["total"] for r in ranks]),
        "step_ms": imbalance_stats([r.perf_ms["step"] for r in ranks]),
        "hbm_gb": imbalance_stats([r.hbm_used_gb for r in ranks]),
        "ddr_gb": imbalance_stats([r.ddr_used_gb for r in ranks]),
    }


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ranks_text(ranks: List[int]) -> str:
    unique = sorted(set(ranks))
    if len(unique) > 2 and unique == list(range(unique[0], unique[-1] + 1)):
        return f"{unique[0]}-{unique[-1]}"
    return ",".join(str(r) for r in unique)


def format_markdown(report: PlanReport) -> str:
    """Human-readable tables: summary, memory and time per step, tables, imbalance, ranks, TorchRec's stats."""
    topo = report.topology
    memory = "HBM" if topo.compute_device == "cuda" else "DDR"
    lines = [
        f"# Sharding plan: {report.model} on {topo.world_size} ranks",
        "",
        f"- topology: {topo.hosts} hosts x {topo.devices_per_host} {topo.compute_device} devices, "
        f"HBM {topo.hbm_gb} GB, DDR {topo.ddr_gb} GB per rank, links {topo.intra_host_bw_gbps} GB/s "
        f"in a host, {topo.inter_host_bw_gbps} GB/s between hosts",
        f"- batch size per rank: {report.batch_size} (largest that fits this plan: {report.largest_batch_size}); "
        f"model overrides: {report.model_overrides or 'none'}",
        f"- reserved per rank for the planner (dense + activations + input): HBM {_fmt(report.reserved_gb['hbm'])} GB, "
        f"DDR {_fmt(report.reserved_gb['ddr'])} GB; headroom {topo.headroom:.0%} of {memory}",
        f"- planner {report.planner_seconds:.2f} s, dry run {report.dry_run_seconds:.2f} s",
        "",
    ]
    lines += _dense_lines(report)
    lines += [
        "## Tables",
        "",
        "| table | rows x dim | sharding | kernel | ranks | shards | HBM GB | DDR GB | perf ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in report.tables:
        lines.append(
            f"| {t.module}.{t.name} | {t.rows:,} x {t.dim} | {t.sharding_type} | {t.compute_kernel} | "
            f"{_ranks_text(t.ranks)} | {len(t.shards)} | {_fmt(t.hbm_gb)} | {_fmt(t.ddr_gb)} | {_fmt(t.perf_ms['total'])} |"
        )
    lines += ["", "## Imbalance across ranks", "", "| quantity | max | mean | max / mean | CV |", "| --- | --- | --- | --- | --- |"]
    for name, s in report.imbalance.items():
        lines.append(f"| {name} | {_fmt(s['max'])} | {_fmt(s['mean'])} | {_fmt(s['max_over_mean'])} | {_fmt(s['cv'])} |")
    lines += [
        "",
        "## Ranks",
        "",
        f"{memory} GB per rank by part; time in ms per step (embedding: the planner's fwd/bwd compute + comms).",
        "",
        f"| rank | host | tables | dense | activations | transient | fixed | inputs | {memory} used / cap | fwd compute | "
        "fwd comms | bwd compute | bwd comms | dense compute | memory traffic | host (ops) | step fixed | "
        "dense all-reduce | step ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.ranks:
        p, m = r.perf_ms, r.memory_gb
        cap = r.hbm_cap_gb if topo.compute_device == "cuda" else r.ddr_cap_gb
        lines.append(
            f"| {r.rank} | {r.host} | {_fmt(m['tables'], 2)} | {_fmt(m['dense'], 2)} | {_fmt(m['activations'], 2)} | "
            f"{_fmt(m['transient'], 2)} | {_fmt(m['fixed'], 2)} | "
            f"{_fmt(m['inputs'], 2)} | {_fmt(m['total'], 2)} / {_fmt(cap, 0)} | {_fmt(p['fwd_compute'])} | "
            f"{_fmt(p['fwd_comms'])} | {_fmt(p['bwd_compute'])} | {_fmt(p['bwd_comms'])} | {_fmt(p['dense_compute'])} | "
            f"{_fmt(p['memory_traffic'])} | {_fmt(p['framework_overhead'])} | {_fmt(p['step_fixed'])} | "
            f"{_fmt(p['dense_allreduce'])} | {_fmt(p['step'])} |"
        )
    if report.torchrec_stats:
        lines += ["", "## TorchRec planner stats", "", "```", *report.torchrec_stats, "```"]
    return "\n".join(lines) + "\n"


def _dense_lines(report: PlanReport) -> List[str]:
    dense = report.dense
    if dense is None:
        return []
    step = report.step_ms
    parts = ", ".join(f"{name} {value:.3f}" for name, value in sorted(dense.activation_parts_gb.items()))
    return [
        "## Dense model, activations and the step",
        "",
        "| per rank | GB |",
        "| --- | --- |",
        f"| dense parameters | {dense.parameter_gb:.3f} |",
        f"| gradients | {dense.gradient_gb:.3f} |",
        f"| optimizer state | {dense.optimizer_gb:.3f} |",
        f"| activations kept for backward ({parts}) | {dense.activation_gb:.3f} |",
        f"| transients at the step's peak (peak phase: {dense.peak_phase}) | {dense.transient_gb:.3f} |",
        f"| fixed: cuBLAS workspaces | {dense.fixed_gb:.3f} |",
        f"| input KJTs | {dense.input_gb:.3f} |",
        "",
        (f"Sequences: up to {dense.max_length} tokens, mean {dense.mean_length:.1f} per row. " if dense.max_length
         else "No sequences. ") + "Dense compute: "
        f"{dense.flops / 1e12:.3f} TFLOP per step at {dense.compute_efficiency:.0%} of {dense.peak_tflops:g} TFLOP/s.",
        "",
        "| step of the slowest rank | ms |",
        "| --- | --- |",
        f"| embedding lookups + comms | {step['embedding']:.3f} |",
        f"| dense compute (fwd + bwd) | {step['dense_compute']:.3f} |",
        f"| memory traffic (activations at {report.topology.hbm_bw_gbps:g} GB/s) | {step['memory_traffic']:.3f} |",
        f"| atomic scatter-adds into small tables ({report.topology.scatter_add_ns:g} ns each) | {step['table_scatter']:.3f} |",
        f"| device time (the four above) | {step['device']:.3f} |",
        f"| host time ({dense.ops_per_step:.0f} ops x {report.topology.launch_overhead_us:g} us) | {step['framework_overhead']:.3f} |",
        f"| per-step fixed host time | {step['step_fixed']:.3f} |",
        f"| dense gradient all-reduce | {step['dense_allreduce']:.3f} |",
        f"| total: max(device, host) + fixed + all-reduce | {step['total']:.3f} |",
        "",
    ]


def plot_ranks(report: PlanReport, path: str | Path) -> Path:
    """A PNG with two stacked bar charts over ranks: memory by part vs capacity, and time per step by part."""
    from recsys.plots import pyplot

    plt = pyplot()
    path = Path(path)
    ranks = [r.rank for r in report.ranks]
    on_device = report.topology.compute_device == "cuda"
    cap = report.ranks[0].hbm_cap_gb if on_device else report.ranks[0].ddr_cap_gb
    width = min(24.0, 6.0 + 0.12 * len(ranks))
    fig, (mem_ax, perf_ax) = plt.subplots(2, 1, figsize=(width, 7), sharex=True)
    _stacked(mem_ax, ranks, [(name, [r.memory_gb[name] for r in report.ranks])
                             for name in ("tables", "dense", "activations", "transient", "fixed", "inputs")])
    mem_ax.axhline(cap, color="tab:red", linestyle="--", label=f"capacity {cap:.0f} GB")
    usable = cap * (1 - report.topology.headroom)
    mem_ax.axhline(usable, color="tab:orange", linestyle=":", label=f"usable {usable:.0f} GB")
    mem_ax.set_ylabel(f"{'HBM' if on_device else 'DDR'} GB")
    mem_ax.set_title(f"{report.model} on {report.topology.world_size} ranks, batch {report.batch_size} per rank: "
                     "memory and estimated time per rank")
    mem_ax.legend(loc="upper right")
    _stacked(perf_ax, ranks, [(name, [r.perf_ms[name] for r in report.ranks])
                              for name in (*_PERF_FIELDS, "dense_compute", "memory_traffic", "table_scatter")])
    hidden = [max(r.perf_ms["framework_overhead"] - r.perf_ms["device"], 0.0) for r in report.ranks]
    _stacked_on(perf_ax, ranks, [r.perf_ms["device"] for r in report.ranks],
                [("host time beyond the device's", hidden),
                 ("step fixed", [r.perf_ms["step_fixed"] for r in report.ranks]),
                 ("dense_allreduce", [r.perf_ms["dense_allreduce"] for r in report.ranks])])
    perf_ax.set_ylabel("ms per step")
    perf_ax.set_xlabel("rank")
    perf_ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        return write_atomic(path, lambda temp: fig.savefig(temp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def _stacked(axis, ranks: List[int], parts) -> None:
    _stacked_on(axis, ranks, [0.0] * len(ranks), parts)


def _stacked_on(axis, ranks: List[int], bottom: List[float], parts) -> None:
    bottom = list(bottom)
    for name, values in parts:
        axis.bar(ranks, values, width=0.8, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
