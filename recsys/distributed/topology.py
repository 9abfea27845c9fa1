"""The cluster a sharding plan is made for: hosts, devices, memory and links.

A :class:`TopologyConfig` describes a cluster that need not exist here: the planner plans for it
from any machine (no process group, no GPU), which is how ``recsys plan`` sizes a production job
from a laptop. Units follow TorchRec's planner: GB = 2^30 bytes, bandwidth in GB/s (2^30 bytes
per second) per device.

Example::

    cfg = TopologyConfig(hosts=8, devices_per_host=8, hbm_gb=80, ddr_gb=256)
    topology = cfg.to_topology()          # torchrec Topology, world_size 64
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Dict, Literal

from recsys.errors import ConfigError

GB = 1024**3
_COMPUTE_DEVICES = ("cuda", "cpu")
REFERENCE_RAW_LAUNCH_US = 7.1  # a bare aten op's host time on the host of the default per-op fit (one H200, 2026-12-04)


@dataclass(frozen=True)
class TopologyConfig:
    """A cluster of identical hosts, each with the same number of devices.

    Args:
        hosts: number of hosts (nodes).
        devices_per_host: ranks per host (GPUs per node; the local world size).
        compute_device: "cuda" or "cpu". On "cpu" the planner counts all memory as DDR.
        hbm_gb: device memory per rank in GB (ignored on cpu).
        ddr_gb: host memory per rank in GB.
        intra_host_bw_gbps: bandwidth between ranks of one host in GB/s (NVLink: 450 on H100).
        inter_host_bw_gbps: bandwidth between hosts per rank in GB/s (a 400 Gb/s NIC: 50).
        headroom: fraction of each rank's memory the plan keeps free (allocator fragmentation,
            workspaces, the CUDA context), in [0, 1).
        fp32_tflops / tf32_tflops / bf16_tflops: the device's dense peak in TFLOP/s for float32
            matmuls at ``train.matmul_precision`` "highest" / "high" / "medium" (H100 SXM: 67 /
            495 / 989).
        compute_efficiency: the fraction of that peak the dense layers reach, in (0, 1]; the
            plan's dense compute time is FLOPs / (peak x efficiency).
        launch_overhead_us: host time per aten op a training step dispatches, in microseconds
            (Python, dispatcher, autograd bookkeeping, launch; ops counted by
            :func:`~recsys.distributed.step_ops.step_ops`). The step's host time is ops x this; a
            step takes max(host time, device time) + ``step_fixed_ms``. Default 7.6: the line through the
            host-bound rows of ``benchmarks/plan_vs_measured.py`` on one H200 (torch 2.11.0+cu130,
            torchrec 1.6.1, 2026-12-04) through emb_mlp (158 ops, ~4.5 ms) and MIMN (~23k ops, 177 ms
            at batch 64); a bare ``x.add_(1)`` loop measured 7.1 us per op there, a small
            MLP's forward + backward + Adam 12.8 us per op.
        step_fixed_ms: host time per step that does not scale with the ops (DistributedModelParallel's
            input distribution and awaitables, KJT handling, the optimizer's Python), in ms. Default
            3.3: the same fit (the intercept).
        hbm_bw_gbps: device memory bandwidth in GB/s; memory-bound work (activations written in
            forward, read in backward, their gradients written and read) costs their bytes over
            it. H200: 4800 (H100 SXM 3350).
        cublas_workspace_mb: the cuBLAS / cuBLASLt workspace one thread's handle allocates through
            the caching allocator on its first matmul (counted by ``max_memory_allocated``), in MiB;
            a step has two (the forward's thread and autograd's device thread). 32: measured on one
            H200, torch 2.11.0+cu130, 2026-12-04 (each first matmul added 33554432 bytes); 0 on cpu.
        scatter_add_ns: device time per element of an atomic ``index_add_`` of many elements into
            a small table (the HSTU relative-bias gradient: ``[B, N, N]`` pairs into a few hundred
            entries, serialised on each entry), in ns. Default 1.33: the profile of HSTU training
            on one H100 (docs/benchmarks.md, "Training throughput on one GPU", 2026-11-23, Beauty
            config, batch 128, 4 layers, histories up to 50): ``index_add_`` took 17 ms over 10
            steps of 5 calls, 4 of them the layers' bias gradients of 128 x 50 x 50 pairs (counted
            on CPU; the fifth adds a handful of rows): 17 ms / (10 x 4 x 320,000). An upper bound
            if that batch's longest history was shorter than 50.

    The batch is not part of the cluster: the planner plans for the run's ``train.batch_size``
    (examples per rank per step), read from the run config.
    """

    MOVED_KEYS: ClassVar[Dict[str, str]] = {
        "batch_size": "the planner plans for train.batch_size (examples per rank per step) of the run "
        "config (--config); set it there, e.g. `recsys plan ... train.batch_size=4096`",
    }

    hosts: int = 1
    devices_per_host: int = 8
    compute_device: Literal["cuda", "cpu"] = "cuda"
    hbm_gb: float = 80.0
    ddr_gb: float = 256.0
    intra_host_bw_gbps: float = 450.0
    inter_host_bw_gbps: float = 50.0
    headroom: float = 0.15
    fp32_tflops: float = 67.0
    tf32_tflops: float = 495.0
    bf16_tflops: float = 989.0
    compute_efficiency: float = 0.4
    launch_overhead_us: float = 7.6
    step_fixed_ms: float = 3.3
    hbm_bw_gbps: float = 4800.0
    cublas_workspace_mb: float = 32.0
    scatter_add_ns: float = 1.33

    WORKSPACE_THREADS: ClassVar[int] = 2  # the forward's thread and autograd's device thread

    def __post_init__(self) -> None:
        for name in ("hosts", "devices_per_host"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"topology.{name} must be an integer >= 1, got {value!r}")
        if self.compute_device not in _COMPUTE_DEVICES:
            raise ConfigError(
                f"topology.compute_device must be one of {list(_COMPUTE_DEVICES)}, got {self.compute_device!r}"
            )
        for name in ("hbm_gb", "ddr_gb", "intra_host_bw_gbps", "inter_host_bw_gbps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"topology.{name} must be a number > 0, got {value!r}")
        for name in ("fp32_tflops", "tf32_tflops", "bf16_tflops"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"topology.{name} must be a number > 0, got {value!r}")
        if isinstance(self.launch_overhead_us, bool) or not isinstance(self.launch_overhead_us, (int, float)) \
                or self.launch_overhead_us < 0:
            raise ConfigError(f"topology.launch_overhead_us must be a number >= 0, got {self.launch_overhead_us!r}")
        for name in ("step_fixed_ms", "cublas_workspace_mb", "scatter_add_ns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"topology.{name} must be a number >= 0, got {value!r}")
        if isinstance(self.hbm_bw_gbps, bool) or not isinstance(self.hbm_bw_gbps, (int, float)) or self.hbm_bw_gbps <= 0:
            raise ConfigError(f"topology.hbm_bw_gbps must be a number > 0, got {self.hbm_bw_gbps!r}")
        if not isinstance(self.headroom, (int, float)) or not 0 <= self.headroom < 1:
            raise ConfigError(f"topology.headroom must be in [0, 1), got {self.headroom!r}")
        if not isinstance(self.compute_efficiency, (int, float)) or not 0 < self.compute_efficiency <= 1:
            raise ConfigError(f"topology.compute_efficiency must be in (0, 1], got {self.compute_efficiency!r}")
        if self.hosts > 1 and self.inter_host_bw_gbps > self.intra_host_bw_gbps:
            raise ConfigError(
                f"topology.inter_host_bw_gbps ({self.inter_host_bw_gbps}) exceeds intra_host_bw_gbps "
                f"({self.intra_host_bw_gbps}); links between hosts are the slower ones: swap or fix the values"
            )

    def for_host(self, raw_launch_us: float) -> "TopologyConfig":
        """This topology with its host constants (``launch_overhead_us``, ``step_fixed_ms``) scaled
        to a host whose bare aten op takes ``raw_launch_us`` (``benchmarks/calibrate_device.py``
        measures it), against :data:`REFERENCE_RAW_LAUNCH_US` on the host of the default fit: the
        per-op and per-step host work is the same Python and dispatcher code, run by a faster or
        slower CPU. E.g. the H100 machine of 2026-12-06 measured 9.85 us: 1.39x the defaults."""
        if isinstance(raw_launch_us, bool) or not isinstance(raw_launch_us, (int, float)) or raw_launch_us <= 0:
            raise ConfigError(f"raw_launch_us must be a number > 0 (calibrate_device.py's 'raw_launch_us'), got {raw_launch_us!r}")
        scale = raw_launch_us / REFERENCE_RAW_LAUNCH_US
        return dataclasses.replace(self, launch_overhead_us=self.launch_overhead_us * scale,
                                   step_fixed_ms=self.step_fixed_ms * scale)

    def peak_tflops(self, matmul_precision: str = "highest") -> float:
        """Dense peak TFLOP/s for float32 training at ``train.matmul_precision``."""
        return {"highest": self.fp32_tflops, "high": self.tf32_tflops, "medium": self.bf16_tflops}[matmul_precision]

    @property
    def memory_gb(self) -> float:
        """The memory that trains, per rank: HBM on cuda, DDR on cpu."""
        return self.hbm_gb if self.compute_device == "cuda" else self.ddr_gb

    @property
    def fixed_bytes(self) -> float:
        """Allocations every training step holds regardless of the model: the cuBLAS workspaces (cuda only)."""
        if self.compute_device != "cuda":
            return 0.0
        return self.WORKSPACE_THREADS * self.cublas_workspace_mb * 2**20

    @property
    def world_size(self) -> int:
        """Total ranks: hosts x devices_per_host."""
        return self.hosts * self.devices_per_host

    def to_topology(self):
        """The torchrec ``Topology`` of this cluster (built through ``TopologyFactory``)."""
        from torchrec.distributed.planner.types import (
            HardwareConfig,
            KernelConfig,
            TopologyFactory,
            TrainerConfig,
        )

        hbm_bytes = int(self.hbm_gb * GB) if self.compute_device == "cuda" else None
        return TopologyFactory.create_topology(
            trainer_config=TrainerConfig(
                world_size=self.world_size,
                local_world_size=self.devices_per_host,
                hbm_cap_bytes=hbm_bytes,
                ddr_cap_bytes=int(self.ddr_gb * GB),
            ),
            hardware_config=HardwareConfig(
                intra_host_bw=self.intra_host_bw_gbps * GB / 1000,  # bytes/ms
                inter_host_bw=self.inter_host_bw_gbps * GB / 1000,  # bytes/ms
            ),
            kernel_config=KernelConfig(compute_device=self.compute_device, use_hardware_based_bandwidth=True),
        )
