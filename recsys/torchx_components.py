"""TorchX components of recsys: ``train``, ``evaluate``, ``plan`` and ``serve``, each a typed function
returning an AppDef whose docstring is its ``--help``.

Installed, they are registered under the ``torchx.components`` entry-point group as
``recsys.train``, ``recsys.evaluate``, ``recsys.plan`` and ``recsys.serve``, beside TorchX's own builtins
(``dist.ddp``, ``utils.echo``, ...: pyproject.toml registers ``torchx.components`` as well, since
registering the group replaces the builtins otherwise)::

    torchx builtins                                   # lists both
    torchx run -s local_cwd recsys.train --config configs/dlrm/synthetic.yaml -j 1x2
    torchx run -s slurm recsys.train --config configs/dlrm/synthetic.yaml -j 4x8 -h gpu.8
    torchx run -s local_cwd recsys.evaluate --config configs/dlrm/synthetic.yaml
    torchx run -s local_cwd recsys.plan --config configs/plan/dlrm_1b.yaml \\
        --topology configs/plan/h100_64x8.yaml --out runs/plan-512
    torchx run -s local_cwd recsys.serve --checkpoint runs/dlrm-synthetic --host 127.0.0.1

``train`` and ``evaluate`` run ``python -m recsys.cli`` on every process through torchrun, which
sets RANK/WORLD_SIZE; the recipe joins the process group from them (gloo on CPU, NCCL on GPUs).
The planner needs no GPU and no process group: one CPU process plans any world size, so ``plan``
is a single replica, and ``serve`` runs ``recsys serve`` in ``replicas`` identical replicas.

The default ``--image`` is what ``docker/Dockerfile`` builds (``docker build -f docker/Dockerfile
-t recsys-zoo:cpu .``); on Kubernetes push it to a registry and pass
``--image <registry>/recsys-zoo:<tag>``.
"""

import torchx.specs as specs
from torchx.components.dist import torchrun
from torchx.components.utils import python

DEFAULT_IMAGE = "recsys-zoo:cpu"


def train(
    *overrides: str,
    config: str = "configs/dlrm/synthetic.yaml",
    resume: bool = False,
    j: str = "1x1",
    image: str = DEFAULT_IMAGE,
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
        image: container image with recsys installed (docker/Dockerfile; ignored by local_cwd).
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


def evaluate(
    *overrides: str,
    config: str = "configs/dlrm/synthetic.yaml",
    checkpoint: str | None = None,
    j: str = "1x1",
    image: str = DEFAULT_IMAGE,
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
        image: container image with recsys installed (docker/Dockerfile; ignored by local_cwd).
        h: named resource, overrides cpu/gpu/memMB.
        cpu: CPUs per replica.
        gpu: GPUs per replica.
        memMB: memory per replica in MB.
    """
    args = ["eval", "--config", config, *(["--checkpoint", checkpoint] if checkpoint else []), *overrides]
    return torchrun(*args, m="recsys.cli", image=image, name="recsys-eval", h=h, cpu=cpu, gpu=gpu, memMB=memMB, j=j)


def plan(
    *overrides: str,
    config: str = "configs/plan/dlrm_1b.yaml",
    topology: str = "configs/plan/h100_8x8.yaml",
    out: str = "runs/plan",
    image: str = DEFAULT_IMAGE,
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
        image: container image with recsys installed (docker/Dockerfile; ignored by local_cwd).
        h: named resource, overrides cpu/memMB.
        cpu: CPUs of the planning process.
        memMB: memory of the planning process in MB.
    """
    args = ["plan", "--config", config, "--topology", topology, "--out", out, *overrides]
    return python(*args, m="recsys.cli", image=image, name="recsys-plan", cpu=cpu, memMB=memMB, h=h)


def serve(
    *overrides: str,
    checkpoint: str = "runs/dlrm-synthetic",
    host: str = "127.0.0.1",
    port: int = 8800,
    max_batch: int = 32,
    queue: int = 256,
    deadline_ms: float = 100.0,
    token_file: str | None = None,
    config: str | None = None,
    device: str = "cpu",
    uic_url: str | None = None,
    image: str = DEFAULT_IMAGE,
    h: str | None = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    replicas: int = 1,
) -> specs.AppDef:
    """Serves a trained checkpoint over HTTP with ``recsys serve`` (POST /rank or /retrieve, GET /ready, /metrics).

    Args:
        overrides: ``key=value`` overrides of the serve config (e.g. ``kv_cache.num_pages=8192``).
        checkpoint: a ``recsys train`` output_dir (or its checkpoints/ or a step_* folder), on storage the replicas see.
        host: bind address; loopback by default, as ``recsys serve``. Pass ``0.0.0.0`` to serve other hosts
            from a container, together with ``token_file``.
        port: HTTP port, exposed as the role's ``http`` port.
        max_batch: most requests per model batch.
        queue: most requests waiting; more get 503 at once.
        deadline_ms: a request not answered within this gets 503 with Retry-After.
        token_file: file holding the bearer token requests must carry (recommended off loopback).
        config: serve config YAML (e.g. configs/serve/hstu_ranking.yaml: the HSTU ranker's KV cache).
        device: where the model scores, ``cpu`` or ``cuda`` (then ask for ``gpu=1``).
        uic_url: mimn runs: the UIC (``recsys uic serve``) whose user states the model reads.
        image: container image with recsys installed (docker/Dockerfile; ignored by local_cwd).
        h: named resource, overrides cpu/memMB.
        cpu: CPUs per replica.
        gpu: GPUs per replica.
        memMB: memory per replica in MB.
        replicas: identical server replicas (put a load balancer in front).
    """
    args = ["serve", "--checkpoint", checkpoint, "--host", host, "--port", str(port), "--max-batch", str(max_batch),
            "--queue", str(queue), "--deadline-ms", str(deadline_ms), "--device", device,
            *(["--token-file", token_file] if token_file else []), *(["--config", config] if config else []),
            *(["--uic-url", uic_url] if uic_url else []), *overrides]
    app = python(*args, m="recsys.cli", image=image, name="recsys-serve", cpu=cpu, gpu=gpu, memMB=memMB, h=h,
                 num_replicas=replicas)
    app.roles[0].port_map = {"http": port}
    return app
