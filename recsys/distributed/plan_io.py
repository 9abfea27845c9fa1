"""Sharding plans as JSON files: save the plan a run used (or a dry run chose), load it back exactly.

A saved plan pins every table's placement: its sharding type, compute kernel, ranks and shards
(offsets, sizes and placement ``rank:N/cpu`` or ``rank:N/cuda:M``). Loading rebuilds the TorchRec
``ShardingPlan`` (``ParameterSharding`` with an ``EnumerableShardingSpec`` of ``ShardMetadata``),
which ``shard_model(..., plan=...)`` hands to ``DistributedModelParallel`` unchanged, after
:func:`check_plan_fits` has compared it with the model and the job.

File layout (``format`` and ``version`` identify it)::

    {"format": "recsys-sharding-plan", "version": 1, "world_size": 64, "compute_device": "cuda",
     "modules": {"sparse_arch": {"t_item_id": {"sharding_type": "row_wise", "compute_kernel": "fused",
                                               "ranks": [0, 1, ...],
                                               "shards": [{"offsets": [0, 0], "sizes": [15625000, 128],
                                                           "placement": "rank:0/cuda:0"}, ...]}}}}

Imports point one way: ``sharding`` uses this module (to load and check a given plan, and
re-exports :func:`plan_to_dict` / :func:`plan_to_text`); this module never imports ``sharding``.

Example::

    save_plan(dmp.plan, "runs/x/plan.json", world_size=ctx.world_size, compute_device="cpu")
    plan = load_plan("runs/x/plan.json")
    dmp = shard_model(model, ctx, ShardingConfig(), FusedOptimizerConfig(), plan=plan)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

from torch import nn
from torchrec.distributed.types import (
    EmbeddingModuleShardingPlan,
    EnumerableShardingSpec,
    ParameterSharding,
    ShardingPlan,
    ShardMetadata,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys.errors import ConfigError
from recsys.atomic_files import write_json_atomic

FORMAT = "recsys-sharding-plan"
VERSION = 1
_FLAGS = ("enforce_hbm", "stochastic_rounding")
_UNSAVED = ("cache_params", "key_value_params", "bounds_check_mode", "output_dtype")


@dataclass
class SavedShardingPlan(ShardingPlan):
    """A ``ShardingPlan`` that remembers the job it was made for.

    Args:
        plan: module path -> table -> ParameterSharding (as in ``ShardingPlan``).
        world_size: ranks of the job the plan places tables on.
        compute_device: "cpu" or "cuda".
    """

    world_size: int = 0
    compute_device: str = "cpu"


def plan_to_dict(plan: ShardingPlan) -> Dict[str, Dict[str, Dict[str, object]]]:
    """Module path -> table -> {sharding_type, compute_kernel, ranks, shards}: JSON-ready."""
    result: Dict[str, Dict[str, Dict[str, object]]] = {}
    for path, module_plan in sorted(plan.plan.items()):
        tables = {}
        for table, param_sharding in sorted(module_plan.items()):
            spec = param_sharding.sharding_spec
            shards = [
                {
                    "offsets": list(shard.shard_offsets),
                    "sizes": list(shard.shard_sizes),
                    "placement": str(shard.placement),
                }
                for shard in getattr(spec, "shards", [])
            ]
            tables[table] = {
                "sharding_type": param_sharding.sharding_type,
                "compute_kernel": param_sharding.compute_kernel,
                "ranks": list(param_sharding.ranks or []),
                "shards": shards,
            }
        result[path] = tables
    return result


def plan_to_text(plan: ShardingPlan) -> str:
    """The plan as indented JSON, for logs and for storing beside checkpoints."""
    return json.dumps(plan_to_dict(plan), indent=2, sort_keys=True)


def plan_document(plan: ShardingPlan, world_size: int, compute_device: str) -> dict:
    """The JSON-ready form of `plan` (see the module docstring for the layout)."""
    for path, module_plan in plan.plan.items():
        for table, sharding in module_plan.items():
            for name in _UNSAVED:
                if getattr(sharding, name, None) is not None:
                    raise ConfigError(
                        f"table {path}.{table} sets {name}, which plan files do not store; "
                        f"remove the {name} constraint to save this plan"
                    )
    modules = plan_to_dict(plan)
    for path, tables in modules.items():
        for table, entry in tables.items():
            for flag in _FLAGS:
                value = getattr(plan.plan[path][table], flag)
                if value is not None:
                    entry[flag] = bool(value)
    return {
        "format": FORMAT,
        "version": VERSION,
        "world_size": int(world_size),
        "compute_device": compute_device,
        "modules": modules,
    }


def save_plan(plan: ShardingPlan, path: str | Path, world_size: int, compute_device: str) -> Path:
    """Saves `plan` (made for `world_size` ranks computing on `compute_device`) as JSON, atomically."""
    return write_json_atomic(path, plan_document(plan, world_size, compute_device), sort_keys=True)


def load_plan(path: str | Path) -> SavedShardingPlan:
    """Reads a plan file written by :func:`save_plan`, or the ``plan`` section of a ``recsys plan`` report."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"plan file {path} does not exist; write one with `recsys plan ... --out DIR` or save_plan")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"plan file {path} is not valid JSON (line {e.lineno}): {e.msg}") from None
    if isinstance(data, dict) and data.get("format") != FORMAT and isinstance(data.get("plan"), dict):
        data = data["plan"]  # a dry-run report holds the plan under "plan"
    return plan_from_document(data, where=str(path))


def plan_from_document(data: Mapping, where: str = "plan") -> SavedShardingPlan:
    """Rebuilds the ShardingPlan from :func:`plan_document`'s output."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a sharding plan file (no \"format\": {FORMAT!r}); save plans with save_plan")
    if data.get("version") != VERSION:
        raise ConfigError(f"{where} has plan format version {data.get('version')!r}; this library reads version {VERSION}")
    try:
        modules = {
            path: EmbeddingModuleShardingPlan(
                {table: _parameter_sharding(entry) for table, entry in tables.items()}
            )
            for path, tables in data["modules"].items()
        }
        return SavedShardingPlan(
            plan=modules, world_size=int(data["world_size"]), compute_device=str(data["compute_device"])
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{where} is a damaged sharding plan ({type(e).__name__}: {e}); re-create it") from None


def _parameter_sharding(entry: Mapping) -> ParameterSharding:
    shards = [
        ShardMetadata(
            shard_offsets=[int(v) for v in shard["offsets"]],
            shard_sizes=[int(v) for v in shard["sizes"]],
            placement=str(shard["placement"]),
        )
        for shard in entry["shards"]
    ]
    return ParameterSharding(
        sharding_type=str(entry["sharding_type"]),
        compute_kernel=str(entry["compute_kernel"]),
        ranks=[int(rank) for rank in entry["ranks"]],
        sharding_spec=EnumerableShardingSpec(shards) if shards else None,
        **{flag: entry[flag] for flag in _FLAGS if flag in entry},
    )


def model_tables(model: nn.Module) -> Dict[str, Dict[str, Tuple[int, int]]]:
    """Module path -> table -> (rows, dim) for every TorchRec embedding module of `model`."""
    tables: Dict[str, Dict[str, Tuple[int, int]]] = {}
    for path, module in model.named_modules():
        if isinstance(module, EmbeddingBagCollection):
            configs = module.embedding_bag_configs()
        elif isinstance(module, EmbeddingCollection):
            configs = module.embedding_configs()
        else:
            continue
        tables[path] = {c.name: (c.num_embeddings, c.embedding_dim) for c in configs}
    return tables


def _covered_shape(sharding: ParameterSharding) -> Tuple[int, int] | None:
    shards = getattr(sharding.sharding_spec, "shards", None)
    if not shards:
        return None
    rows = max(s.shard_offsets[0] + s.shard_sizes[0] for s in shards)
    dims = max(s.shard_offsets[1] + s.shard_sizes[1] for s in shards)
    return rows, dims


def _plan_ranks(plan: ShardingPlan) -> List[int]:
    return sorted({rank for module in plan.plan.values() for s in module.values() for rank in (s.ranks or [])})


def check_plan_fits(plan: ShardingPlan, model: nn.Module, world_size: int, compute_device: str) -> None:
    """Raises ConfigError naming what differs between `plan` and the model / job it is used for.

    Checks the world size (exactly, when the plan remembers it), the device type of the
    placements, the embedding modules and tables, and that each table's shards cover its
    ``[rows, dim]``.
    """
    fix = "re-plan for this job (`recsys plan`, or drop sharding.plan to let the planner place the tables)"
    if isinstance(plan, SavedShardingPlan) and plan.world_size != world_size:
        raise ConfigError(f"the sharding plan is for world size {plan.world_size}, this job has {world_size} ranks; {fix}")
    out_of_range = [rank for rank in _plan_ranks(plan) if rank >= world_size]
    if out_of_range:
        raise ConfigError(f"the sharding plan places tables on ranks {out_of_range[:8]}, this job has {world_size} ranks; {fix}")
    if isinstance(plan, SavedShardingPlan) and plan.compute_device != compute_device:
        raise ConfigError(
            f"the sharding plan is for compute device {plan.compute_device!r}, this job computes on "
            f"{compute_device!r}; {fix}"
        )
    expected = model_tables(model)
    if sorted(plan.plan) != sorted(expected):
        raise ConfigError(f"the sharding plan covers modules {sorted(plan.plan)}, the model has {sorted(expected)}; {fix}")
    for path, tables in expected.items():
        planned = plan.plan[path]
        missing, extra = sorted(set(tables) - set(planned)), sorted(set(planned) - set(tables))
        if missing or extra:
            raise ConfigError(
                f"module {path!r}: the plan lacks tables {missing} and has tables {extra} the model "
                f"does not; {fix}"
            )
        for table, shape in tables.items():
            covered = _covered_shape(planned[table])
            if covered is not None and covered != shape:
                raise ConfigError(
                    f"table {table!r} is {shape[0]} x {shape[1]} in the model, the plan's shards cover "
                    f"{covered[0]} x {covered[1]}; {fix}"
                )
