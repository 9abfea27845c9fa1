"""Sharding: place every embedding table on the ranks and wrap the model in DMP.

`shard_model` always returns a `DistributedModelParallel` (a world of one included), so one code
path trains, checkpoints and serves everywhere. Table placement comes from TorchRec's
`EmbeddingShardingPlanner` for this world size and compute device, steered by per-table
constraints (`ShardingConfig`).

Two facts of the CPU (gloo) stack shape the plan:

- The planner refuses row-wise and table-row-wise on CPU, although both shard exactly. Tables
  constrained to them are placed by the planner first (table-wise, so it can finish) and then
  re-placed with TorchRec's sharding-plan generators (`row_wise()` / `table_row_wise()`, the ones
  `construct_module_sharding_plan` uses).
- Data-parallel EmbeddingCollection (sequence) tables fail on CPU (FBGEMM issue #4586), so on CPU
  sequence tables are kept to row-wise / table-wise / column-wise.
- FBGEMM's CPU kernels update tables with row-wise adagrad, adagrad or SGD only (no Adam).

Out-of-range ids: FBGEMM's default bounds check (``BoundsCheckMode.WARNING``) logs an id outside
its table and then reads row 0 instead, so a bad batch trains silently on item 0's row. The
sharders built here set ``BoundsCheckMode.FATAL`` for every sharded table: on CPU the lookup raises
``RuntimeError: Expected idx < num_rows`` (FBGEMM's log line before it names the table, the id and
the row count); on CUDA it is a device-side assert. Data-parallel tables (torch's own lookup)
already raise. Batches built by ``recsys.data`` are checked before they reach the model
(``DataError`` naming the feature and the id); this is the last line for batches built elsewhere.
The mode travels in the sharders' ``fused_params``, not in the plan (plan files stay as they are).

Example::

    ctx = init_distributed()
    model = MyModel(device=torch.device("meta"))
    dmp = shard_model(model, ctx, ShardingConfig({"t_item": {"sharding_types": ["row_wise"]}}),
                      FusedOptimizerConfig("row_wise_adagrad", lr=0.05))
    print(plan_to_text(dmp.plan))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch.distributed as dist
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.types import PlannerError, StorageReservation
from torchrec.distributed.sharding_plan import row_wise, table_row_wise
from torchrec.distributed.types import (
    EmbeddingModuleShardingPlan,
    ModuleSharder,
    ParameterSharding,
    ShardingPlan,
    ShardingType,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys.distributed.optimizers import FusedOptimizerConfig, apply_fused_optimizer
from recsys.distributed.plan_io import check_plan_fits, load_plan, plan_to_dict, plan_to_text  # noqa: F401 (re-exported)
from recsys.distributed.process_group import DistContext
from recsys.errors import ConfigError

SHARDING_TYPES: Tuple[str, ...] = (
    ShardingType.DATA_PARALLEL.value,
    ShardingType.TABLE_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
)
COMPUTE_KERNELS: Tuple[str, ...] = (
    EmbeddingComputeKernel.DENSE.value,
    EmbeddingComputeKernel.FUSED.value,
    EmbeddingComputeKernel.FUSED_UVM.value,
    EmbeddingComputeKernel.FUSED_UVM_CACHING.value,
)
_PLANNER_REFUSES_ON_CPU = (ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value)
_SEQUENCE_TYPES_ON_CPU = [
    ShardingType.ROW_WISE.value,
    ShardingType.TABLE_WISE.value,
    ShardingType.COLUMN_WISE.value,
]
_CONSTRAINT_FIELDS = ("sharding_types", "compute_kernels")
_FUSED_OPTIMIZERS_ON_CPU = ("row_wise_adagrad", "adagrad", "sgd")  # FBGEMM's CPU kernels
# Handed to FBGEMM's table-batched embedding kernels of every sharded table (the default, WARNING,
# reads row 0 for an out-of-range id).
_SHARDER_FUSED_PARAMS = {"bounds_check_mode": BoundsCheckMode.FATAL}


@dataclass(frozen=True)
class ShardingConfig:
    """Per-table sharding constraints; tables not named are left to the planner.

    Args:
        tables (dict): table name -> {"sharding_types": [...], "compute_kernels": [...]}, each
            list optional. Sharding types: "data_parallel", "table_wise", "column_wise",
            "row_wise", "table_row_wise", "table_column_wise". Compute kernels: "dense",
            "fused", "fused_uvm", "fused_uvm_caching".
        plan (str | None): a plan file (`recsys plan` output or `plan_io.save_plan`) to use
            exactly instead of planning; it must match the model and the job's world size.
            Exclusive with `tables`.

    Example::

        ShardingConfig({"t_user": {"sharding_types": ["row_wise"]},
                        "t_cat": {"sharding_types": ["data_parallel"]}})
        ShardingConfig(plan="runs/plan/plan.json")
    """

    tables: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)
    plan: Optional[str] = None

    def __post_init__(self) -> None:
        for table, constraint in self.tables.items():
            _validate_constraint(table, constraint)
        if self.plan is not None and self.tables:
            raise ConfigError(
                "sharding.plan and sharding.tables are exclusive: a saved plan already fixes every "
                "table's placement; drop sharding.tables or sharding.plan"
            )

    def sharding_types(self, table: str) -> List[str]:
        return list(self.tables.get(table, {}).get("sharding_types", []))

    def compute_kernels(self, table: str) -> List[str]:
        return list(self.tables.get(table, {}).get("compute_kernels", []))


def _validate_constraint(table: str, constraint: Mapping[str, Sequence[str]]) -> None:
    if not isinstance(constraint, Mapping):
        raise ConfigError(
            f"sharding.tables.{table} must be a mapping with keys {list(_CONSTRAINT_FIELDS)}, "
            f"got {type(constraint).__name__}"
        )
    for key in constraint:
        if key not in _CONSTRAINT_FIELDS:
            raise ConfigError(
                f"sharding.tables.{table}.{key} is not a constraint; use {list(_CONSTRAINT_FIELDS)}"
            )
    _validate_values(table, "sharding_types", constraint.get("sharding_types", []), SHARDING_TYPES)
    kernels = constraint.get("compute_kernels", [])
    _validate_values(table, "compute_kernels", kernels, COMPUTE_KERNELS)


def _validate_values(table: str, key: str, values: Sequence[str], valid: Sequence[str]) -> None:
    if isinstance(values, str):
        raise ConfigError(f"sharding.tables.{table}.{key} must be a list, e.g. [{values!r}]")
    for value in values:
        if value not in valid:
            raise ConfigError(
                f"sharding.tables.{table}.{key}: {value!r} is not valid; use one of {list(valid)}"
            )


def default_sharders() -> List[ModuleSharder[nn.Module]]:
    """Sharders for EmbeddingBagCollection and EmbeddingCollection, with FBGEMM's bounds check
    set to FATAL: an id outside its table raises instead of reading row 0 (module docstring)."""
    return [
        EmbeddingBagCollectionSharder(fused_params=dict(_SHARDER_FUSED_PARAMS)),
        EmbeddingCollectionSharder(fused_params=dict(_SHARDER_FUSED_PARAMS)),
    ]


def _embedding_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """Module path -> TorchRec embedding module, for every one in `model`."""
    return {
        path: module
        for path, module in model.named_modules()
        if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection))
    }


def _table_names(module: nn.Module) -> List[str]:
    if isinstance(module, EmbeddingCollection):
        return [config.name for config in module.embedding_configs()]
    return [config.name for config in module.embedding_bag_configs()]


def _check_tables_exist(model: nn.Module, sharding: ShardingConfig) -> None:
    known = {name for module in _embedding_modules(model).values() for name in _table_names(module)}
    unknown = sorted(set(sharding.tables) - known)
    if unknown:
        raise ConfigError(
            f"sharding names tables {unknown} that the model does not have; "
            f"its tables are {sorted(known)}"
        )


def planner_constraints(
    model: nn.Module, sharding: ShardingConfig, on_cpu: bool
) -> Dict[str, ParameterConstraints]:
    """Constraints the planner can satisfy; row-wise on CPU is planned table-wise for now."""
    constraints = {}
    for module in _embedding_modules(model).values():
        is_sequence = isinstance(module, EmbeddingCollection)
        for table in _table_names(module):
            types = sharding.sharding_types(table)
            if on_cpu and types and set(types) <= set(_PLANNER_REFUSES_ON_CPU):
                types = [ShardingType.TABLE_WISE.value]
            elif on_cpu and not types and is_sequence:
                types = list(_SEQUENCE_TYPES_ON_CPU)
            elif on_cpu and is_sequence and ShardingType.DATA_PARALLEL.value in types:
                raise ConfigError(
                    f"sharding.tables.{table}: data_parallel does not work for sequence "
                    "(EmbeddingCollection) tables on CPU (FBGEMM issue #4586); "
                    f"use one of {_SEQUENCE_TYPES_ON_CPU}"
                )
            kernels = sharding.compute_kernels(table)
            if types or kernels:
                constraints[table] = ParameterConstraints(
                    sharding_types=types or None, compute_kernels=kernels or None
                )
    return constraints


def _memory_caps(ctx: DistContext) -> Tuple[Optional[int], Optional[int]]:
    """(HBM, DDR) bytes per rank of this machine: the GPU's memory, and host memory shared by the
    host's ranks; None where unknown (the planner then uses its defaults)."""
    hbm = None
    if ctx.device.type == "cuda":
        import torch

        hbm = int(torch.cuda.get_device_properties(ctx.device).total_memory)
    try:
        ddr = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(ctx.local_world_size, 1)
    except (ValueError, OSError, AttributeError):
        ddr = None
    return hbm, ddr


def _make_topology(ctx: DistContext) -> Topology:
    """This job's topology with its real memory per rank (TorchRec's defaults are 32 GB HBM, 128 GB DDR)."""
    compute_device = ctx.device.type
    hbm, ddr = _memory_caps(ctx)
    try:
        from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    except ImportError:  # older torchrec: no factory
        return Topology(
            world_size=ctx.world_size,
            local_world_size=ctx.local_world_size,
            compute_device=compute_device,
            hbm_cap=hbm,
            ddr_cap=ddr,
        )
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=ctx.world_size, local_world_size=ctx.local_world_size, hbm_cap_bytes=hbm, ddr_cap_bytes=ddr
        ),
        kernel_config=KernelConfig(compute_device=compute_device),
    )


def _hand_placed(
    ctx: DistContext, sharder: ModuleSharder[nn.Module], param: nn.Parameter, sharding_type: str
) -> ParameterSharding:
    """A row-wise / table-row-wise placement built without the planner (the same on every rank).

    Table-row-wise tables go to the ranks of the first host.
    """
    if sharding_type == ShardingType.ROW_WISE.value:
        generator = row_wise()
    else:
        generator = table_row_wise(host_index=0)
    return generator(param, ctx.local_world_size, ctx.world_size, ctx.device.type, sharder)


def _place_refused_tables(
    model: nn.Module, plan: ShardingPlan, ctx: DistContext, sharding: ShardingConfig
) -> None:
    """Replace the planner's stand-in placement of tables constrained to row-wise on CPU."""
    sharders = {sharder.module_type: sharder for sharder in default_sharders()}
    for path, module in _embedding_modules(model).items():
        sharder = sharders[type(module)]
        shardable = sharder.shardable_parameters(module)
        module_plan = plan.plan.get(path)
        if not isinstance(module_plan, EmbeddingModuleShardingPlan):
            continue
        for table in _table_names(module):
            types = sharding.sharding_types(table)
            if types and set(types) <= set(_PLANNER_REFUSES_ON_CPU):
                module_plan[table] = _hand_placed(ctx, sharder, shardable[table], types[0])


def plan_sharding(
    model: nn.Module,
    ctx: DistContext,
    sharding: ShardingConfig,
    plan: Optional[ShardingPlan] = None,
    batch_size: Optional[int] = None,
    storage_reservation: Optional[StorageReservation] = None,
) -> ShardingPlan:
    """The sharding plan of `model`'s tables over `ctx.world_size` ranks.

    A given plan (`plan`, else the file `sharding.plan`) is checked against the model and the job
    and returned unchanged. Otherwise the planner plans, using the distributed planner
    (`collective_plan`) when a process group exists, so every rank gets rank 0's plan.

    Args:
        model (nn.Module): unsharded model with TorchRec embedding modules (meta device is fine).
        ctx (DistContext): world size and compute device.
        sharding (ShardingConfig): per-table constraints, or the plan file to use.
        plan (ShardingPlan | None): a plan to use exactly (e.g. from `plan_io.load_plan`).
        batch_size (int | None): examples per rank per step (``train.batch_size``), which sizes
            the planner's estimates of lookups, comms and input memory; None = TorchRec's 512.
        storage_reservation (StorageReservation | None): memory held back from the tables per
            rank (dense model, activations: ``dense_estimate.DenseReservation``); None =
            TorchRec's heuristic.
    """
    if plan is None and sharding.plan is not None:
        plan = load_plan(sharding.plan)
    if plan is not None:
        check_plan_fits(plan, model, ctx.world_size, ctx.device.type)
        return plan
    _check_tables_exist(model, sharding)
    on_cpu = ctx.device.type == "cpu"
    planner = EmbeddingShardingPlanner(
        topology=_make_topology(ctx),
        batch_size=batch_size,
        storage_reservation=storage_reservation,
        constraints=planner_constraints(model, sharding, on_cpu),
    )
    try:
        if dist.is_initialized():
            plan = planner.collective_plan(model, default_sharders(), dist.GroupMember.WORLD)
        else:
            plan = planner.plan(model, default_sharders())
    except PlannerError as e:
        raise ConfigError(
            f"the sharding planner found no plan for {ctx.world_size} ranks at train.batch_size={batch_size} per rank "
            f"({type(e).__name__}: {str(e).splitlines()[0]}); `recsys plan --config ... --topology ...` shows the "
            "memory per part and the batch size that fits"
        ) from None
    if on_cpu:
        _place_refused_tables(model, plan, ctx, sharding)
    return plan


def shard_model(
    model: nn.Module,
    ctx: DistContext,
    sharding: ShardingConfig,
    fused_optimizer: FusedOptimizerConfig,
    plan: Optional[ShardingPlan] = None,
    batch_size: Optional[int] = None,
    storage_reservation: Optional[StorageReservation] = None,
) -> DistributedModelParallel:
    """Attach the fused optimizer, plan the tables and wrap `model` in DMP.

    Args:
        model (nn.Module): unsharded model holding TorchRec embedding modules; may live on
            `meta` (tables and dense layers are materialised on `ctx.device` and re-initialised
            with their `reset_parameters`).
        ctx (DistContext): from `init_distributed`.
        sharding (ShardingConfig): per-table constraints.
        fused_optimizer (FusedOptimizerConfig): optimizer run inside the tables' backward.
        plan (ShardingPlan | None): use exactly this plan (see `plan_sharding`); a plan that does
            not fit the model or the world size is a ConfigError naming the difference.
        batch_size (int | None): examples per rank per step, for the planner (``train.batch_size``).
        storage_reservation (StorageReservation | None): memory per rank held back from the tables.

    Returns:
        DistributedModelParallel: the sharded model; `dmp.plan` is its ShardingPlan (print it
        with `plan_to_text`). The sharded kernels initialise the tables afresh (the weights of
        `model`'s tables are not copied); to start from given weights, call
        `dmp.load_state_dict(full_state_dict)` after sharding: each rank keeps its slice.
    """
    if ctx.device.type == "cpu" and fused_optimizer.optimizer not in _FUSED_OPTIMIZERS_ON_CPU:
        raise ConfigError(
            f"fused optimizer {fused_optimizer.optimizer!r} has no FBGEMM CPU kernel; on CPU use "
            f"one of {list(_FUSED_OPTIMIZERS_ON_CPU)} (it works on CUDA)"
        )
    if ctx.device.type == "cuda":
        _check_gpu_table_widths(model)
    apply_fused_optimizer(model, fused_optimizer)
    plan = plan_sharding(model, ctx, sharding, plan, batch_size, storage_reservation)
    return DistributedModelParallel(
        module=model, device=ctx.device, plan=plan, sharders=default_sharders()
    )


def _check_gpu_table_widths(model: nn.Module) -> None:
    """FBGEMM's CUDA embedding kernels need widths that are multiples of 4 (the CPU ones do not)."""
    for module in model.modules():
        if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection)):
            configs = module.embedding_bag_configs() if isinstance(module, EmbeddingBagCollection) else module.embedding_configs()
            for table in configs:
                if table.embedding_dim % 4:
                    raise ConfigError(
                        f"table {table.name!r} has embedding_dim={table.embedding_dim}; FBGEMM's GPU kernels need a "
                        f"multiple of 4: set the model's embedding_dim to {table.embedding_dim // 4 * 4} or "
                        f"{(table.embedding_dim // 4 + 1) * 4}"
                    )
