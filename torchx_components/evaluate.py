"""TorchX component: evaluate a checkpoint with ``recsys eval``.

    torchx run -s local_cwd ./torchx_components/evaluate.py:evaluate --config configs/dlrm/synthetic.yaml
"""

import torchx.specs as specs
from torchx.components.dist import torchrun


def evaluate(
    *overrides: str,
    config: str = "configs/dlrm/synthetic.yaml",
    checkpoint: str | None = None,
    j: str = "1x1",
    image: str = "ghcr.io/pytorch/torchx:2026.10.26",
    h: str | None = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
) -> specs.AppDef:
    """Evaluates the latest (or given) checkpoint of a config on its validation and test splits.

    Args:
        overrides: ``key=value`` config overrides.
        config: YAML config under configs/.
        checkpoint: checkpoint directory (default: the config's output_dir/checkpoints).
        j: ``nodes x processes per node``.
        image: container image (ignored by local_cwd).
        h: named resource, overrides cpu/gpu/memMB.
        cpu: CPUs per replica.
        gpu: GPUs per replica.
        memMB: memory per replica in MB.
    """
    args = ["eval", "--config", config, *(["--checkpoint", checkpoint] if checkpoint else []), *overrides]
    return torchrun(*args, m="recsys.cli", image=image, name="recsys-eval", h=h, cpu=cpu, gpu=gpu, memMB=memMB, j=j)
