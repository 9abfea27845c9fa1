"""TorchX component: dry-run the sharding planner for a cluster with ``recsys plan``.

    torchx run -s local_cwd ./torchx_components/plan.py:plan --config configs/plan/dlrm_1b.yaml \\
        --topology configs/plan/h100_64x8.yaml --out runs/plan-512

The planner needs no GPU and no process group: one CPU process plans any world size, so the job
is a single replica (``python -m recsys.cli plan``).
"""

import torchx.specs as specs
from torchx.components.utils import python


def plan(
    *overrides: str,
    config: str = "configs/plan/dlrm_1b.yaml",
    topology: str = "configs/plan/h100_8x8.yaml",
    out: str = "runs/plan",
    image: str = "ghcr.io/pytorch/torchx:2026.10.26",
    h: str | None = None,
    cpu: int = 2,
    memMB: int = 8192,
) -> specs.AppDef:
    """Plans a model's embedding tables for a cluster; writes plan.json, plan.md and plan_ranks.png.

    Args:
        overrides: ``key=value`` overrides of the training config, e.g. ``data.synthetic.num_items=1000000000``.
        config: training YAML (model, table sizes in its data section, sharding constraints).
        topology: cluster YAML under configs/plan/ (hosts, GPUs per host, memory, links).
        out: folder for plan.json, plan.md and plan_ranks.png.
        image: container image (ignored by local_cwd).
        h: named resource, overrides cpu/memMB.
        cpu: CPUs of the planning process.
        memMB: memory of the planning process in MB.
    """
    args = ["plan", "--config", config, "--topology", topology, "--out", out, *overrides]
    return python(*args, m="recsys.cli", image=image, name="recsys-plan", cpu=cpu, memMB=memMB, h=h)
