"""Sharding-plan dry run: what TorchRec's planner would do on a cluster, computed on this machine.

The model is built on the meta device (a 10^9-row table costs no memory), the planner plans for
``topology.world_size`` ranks without a process group, and a :class:`PlanReport` collects what it
chose and what it expects:

- per table: sharding type, compute kernel, ranks, shards, estimated perf (ms) and storage (GB);
- per rank: HBM and DDR used vs capacity (tables plus the planner's dense/KJT reservation) and the
  estimated time (fwd/bwd compute + comms: the planner's ``Perf.total``);
- imbalance across ranks: max/mean and coefficient of variation (std/mean) of perf and memory.

``PlanReport.write(out_dir)`` writes ``plan.json`` (the source, holding the loadable plan under
``"plan"``), ``plan.md`` and ``plan_ranks.png``.

Example::

    report = plan_dry_run("dlrm", {"t_item_id": 10**9, "t_user_id": 10**8},
                          TopologyConfig(hosts=8, devices_per_host=8), embedding_dim=128)
    report.write("runs/plan")
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import PlannerError, Stats
from torchrec.distributed.types import ShardingPlan

from recsys.data.features import FeatureSpec
from recsys.atomic_files import write_atomic, write_json_atomic
from recsys.distributed.plan_io import plan_document
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
    """One rank's memory (GB) against capacity and its estimated time per step (ms)."""

    rank: int
    host: int
    hbm_used_gb: float
    hbm_cap_gb: float
    ddr_used_gb: float
    ddr_cap_gb: float
    perf_ms: Dict[str, float]


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
    **model_overrides: Any,
) -> PlanReport:
    """Plans `model_name`'s tables for `topology.world_size` ranks on this machine.

    Args:
        model_name: a zoo model, e.g. "dlrm".
        features: the data's FeatureSpec, or table rows applied to the zoo's default spec
            (``{"t_item_id": 10**9}``, see :func:`feature_spec_with_rows`).
        topology: the cluster to plan for.
        constraints: per-table sharding constraints (a run's ``sharding`` section).
        batch_size: examples per rank per step (a run's ``train.batch_size``).
        **model_overrides: fields of the model's config, e.g. ``embedding_dim=128``.
    """
    from recsys.models import default_feature_spec, get_model

    start = time.perf_counter()
    constraints = constraints or ShardingConfig()
    _check_cpu_constraints(topology, constraints)
    spec = features if isinstance(features, FeatureSpec) else feature_spec_with_rows(default_feature_spec(), features)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"train.batch_size (examples per rank per step) must be an integer >= 1, got {batch_size!r}")
    model = get_model(model_name, feature_spec=spec, device=torch.device("meta"), **model_overrides)
    torch_topology = topology.to_topology()
    stats = _RecordingStats()
    planner = EmbeddingShardingPlanner(
        topology=torch_topology,
        batch_size=batch_size,
        constraints=planner_constraints(model, constraints, topology.compute_device == "cpu"),
        stats=[stats],
    )
    try:
        plan = planner.plan(model, default_sharders())
    except PlannerError as e:
        raise ConfigError(
            f"no sharding plan fits {topology.world_size} ranks of {topology.hbm_gb} GB HBM / "
            f"{topology.ddr_gb} GB DDR: {e}"
        ) from None
    tables = [_table_report(option) for option in stats.best_plan]
    ranks, reserved = _rank_reports(stats, torch_topology, topology.devices_per_host)
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
    )


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
    """Per-rank memory the planner holds back for dense parameters and input KJTs (GB)."""
    reserved = {"hbm": 0.0, "ddr": 0.0}
    for name in ("_dense_storage", "_kjt_storage"):
        storage = getattr(storage_reservation, name, None)
        if storage is not None:
            reserved["hbm"] += storage.hbm / GB
            reserved["ddr"] += storage.ddr / GB
    return reserved


def _rank_reports(stats: _RecordingStats, torch_topology, devices_per_host: int):
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
    ranks = [
        RankReport(
            rank=rank,
            host=rank // devices_per_host,
            hbm_used_gb=hbm[rank] / GB + reserved["hbm"],
            hbm_cap_gb=device.storage.hbm / GB,
            ddr_used_gb=ddr[rank] / GB + reserved["ddr"],
            ddr_cap_gb=device.storage.ddr / GB,
            perf_ms=perf[rank],
        )
        for rank, device in enumerate(torch_topology.devices)
    ]
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
    """Human-readable tables: summary, tables, imbalance, ranks."""
    topo = report.topology
    lines = [
        f"# Sharding plan: {report.model} on {topo.world_size} ranks",
        "",
        f"- topology: {topo.hosts} hosts x {topo.devices_per_host} {topo.compute_device} devices, "
        f"HBM {topo.hbm_gb} GB, DDR {topo.ddr_gb} GB per rank, links {topo.intra_host_bw_gbps} GB/s "
        f"in a host, {topo.inter_host_bw_gbps} GB/s between hosts",
        f"- batch size per rank: {report.batch_size}; model overrides: {report.model_overrides or 'none'}",
        f"- reserved per rank (dense + input): HBM {_fmt(report.reserved_gb['hbm'])} GB, "
        f"DDR {_fmt(report.reserved_gb['ddr'])} GB",
        f"- planner {report.planner_seconds:.2f} s, dry run {report.dry_run_seconds:.2f} s",
        "",
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
        "| rank | host | HBM used / cap GB | DDR used / cap GB | fwd compute | fwd comms | bwd compute | bwd comms | total ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.ranks:
        p = r.perf_ms
        lines.append(
            f"| {r.rank} | {r.host} | {_fmt(r.hbm_used_gb, 2)} / {_fmt(r.hbm_cap_gb, 0)} | "
            f"{_fmt(r.ddr_used_gb, 2)} / {_fmt(r.ddr_cap_gb, 0)} | {_fmt(p['fwd_compute'])} | {_fmt(p['fwd_comms'])} | "
            f"{_fmt(p['bwd_compute'])} | {_fmt(p['bwd_comms'])} | {_fmt(p['total'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_ranks(report: PlanReport, path: str | Path) -> Path:
    """A PNG with two bar charts over ranks: memory used vs capacity, and estimated time per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    path = Path(path)
    ranks = [r.rank for r in report.ranks]
    on_device = report.topology.compute_device == "cuda"
    used = [r.hbm_used_gb if on_device else r.ddr_used_gb for r in report.ranks]
    cap = report.ranks[0].hbm_cap_gb if on_device else report.ranks[0].ddr_cap_gb
    width = min(24.0, 6.0 + 0.12 * len(ranks))
    fig, (mem_ax, perf_ax) = plt.subplots(2, 1, figsize=(width, 7), sharex=True)
    mem_ax.bar(ranks, used, width=0.8, color="tab:blue", label="used")
    mem_ax.axhline(cap, color="tab:red", linestyle="--", label=f"capacity {cap:.0f} GB")
    mem_ax.set_ylabel(f"{'HBM' if on_device else 'DDR'} GB")
    mem_ax.set_title(f"{report.model} on {report.topology.world_size} ranks: memory and estimated time per rank")
    mem_ax.legend(loc="upper right")
    bottom = [0.0] * len(ranks)
    for name in _PERF_FIELDS:
        values = [r.perf_ms[name] for r in report.ranks]
        perf_ax.bar(ranks, values, width=0.8, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    perf_ax.set_ylabel("ms per step")
    perf_ax.set_xlabel("rank")
    perf_ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        return write_atomic(path, lambda temp: fig.savefig(temp, dpi=100, format="png"))
    finally:
        plt.close(fig)
