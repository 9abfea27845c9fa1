"""TorchX component: train a zoo model with ``recsys train`` on one or many processes.

    torchx run -s local_cwd ./torchx_components/train.py:train --config configs/dlrm/synthetic.yaml -j 1x2
    torchx run -s slurm ./torchx_components/train.py:train --config configs/dlrm/synthetic.yaml -j 4x8 -h gpu.8

Every process runs ``python -m recsys.cli train``; torchrun sets RANK/WORLD_SIZE and the recipe
joins the process group from them (gloo on CPU, NCCL on GPUs).
"""

import torchx.specs as specs
from torchx.components.dist import torchrun


def train(
    *overrides: str,
    config: str = "configs/dlrm/synthetic.yaml",
    resume: bool = False,
    j: str = "1x1",
    image: str = "ghcr.io/pytorch/torchx:2026.10.26",
    h: str | None = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    max_retries: int = 0,
    env: dict[str, str] | None = None,
) -> specs.AppDef:
    """Trains the model of a YAML config with ``recsys train``.

    Args:
        overrides: ``key=value`` config overrides, e.g. ``train.epochs=2``.
        config: YAML config under configs/.
        resume: continue from the latest checkpoint in the config's output_dir.
        j: ``nodes x processes per node``, e.g. 1x2 or 4x8.
        image: container image (ignored by local_cwd).
        h: named resource (e.g. a host type of your cluster), overrides cpu/gpu/memMB.
        cpu: CPUs per process group replica.
        gpu: GPUs per replica.
        memMB: memory per replica in MB.
        max_retries: restarts of the whole job after a failure (pair with resume=True).
        env: extra environment variables.
    """
    args = ["train", "--config", config, *(["--resume"] if resume else []), *overrides]
    return torchrun(
        *args, m="recsys.cli", image=image, name="recsys-train", h=h, cpu=cpu, gpu=gpu, memMB=memMB, j=j,
        env=env, max_retries=max_retries,
    )
