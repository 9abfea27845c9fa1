"""``recsys env``: the installed torch / fbgemm / torchrec / triton, and whether they belong together.

FBGEMM's native libraries are built against one torch minor release; any other fails to load with
``undefined symbol`` errors, the most common failure reported against TorchRec and HSTU code.
torchrec is released in lock step with fbgemm (same version). A CUDA torch wants the fbgemm-gpu
wheel; a CPU torch wants fbgemm-gpu-cpu. CUDA builds of torch pin the triton they were built with.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
from dataclasses import dataclass, field

# torch minor -> fbgemm minor (fbgemm's release table)
FBGEMM_FOR_TORCH: dict[tuple[int, int], tuple[int, int]] = {
    (2, 10): (1, 5),
    (2, 11): (1, 6),
    (2, 12): (1, 7),
    (2, 13): (1, 8),
    (2, 14): (1, 9),
}
FBGEMM_DISTRIBUTIONS = ("fbgemm-gpu", "fbgemm-gpu-cpu", "fbgemm-gpu-nightly", "fbgemm-gpu-nightly-cpu")
TRITON_DISTRIBUTIONS = ("triton", "pytorch-triton")


@dataclass
class EnvReport:
    """Versions found and the problems among them (empty ``problems`` = a consistent stack)."""

    versions: dict[str, str | None]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        width = max(len(k) for k in self.versions)
        lines = [f"{name:<{width}}  {version or 'not installed'}" for name, version in self.versions.items()]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("stack OK: these versions belong together" if self.ok else "stack NOT consistent: fix the problems above")
        return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _minor(version: str | None) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _first_installed(dists) -> tuple[str | None, str | None]:
    for dist in dists:
        version = _version(dist)
        if version:
            return dist, version
    return None, None


def check_environment() -> EnvReport:
    """Collects versions and checks torch <-> fbgemm <-> torchrec <-> triton compatibility."""
    torch_version = _version("torch")
    fbgemm_dist, fbgemm_version = _first_installed(FBGEMM_DISTRIBUTIONS)
    triton_dist, triton_version = _first_installed(TRITON_DISTRIBUTIONS)
    report = EnvReport(
        versions={
            "python": _python_version(),
            "torch": torch_version,
            "fbgemm": f"{fbgemm_version} ({fbgemm_dist})" if fbgemm_dist else None,
            "torchrec": _version("torchrec"),
            "triton": f"{triton_version} ({triton_dist})" if triton_dist else None,
            "tensordict": _version("tensordict"),
            "torchmetrics": _version("torchmetrics"),
            "torchx": _version("torchx") or _version("torchx-nightly"),
        }
    )
    _check_fbgemm(report, torch_version, fbgemm_dist, fbgemm_version)
    _check_torchrec(report, fbgemm_version)
    _check_triton(report, torch_version, triton_version)
    return report


def _python_version() -> str:
    import sys

    return sys.version.split()[0]


def _check_fbgemm(report: EnvReport, torch_version, fbgemm_dist, fbgemm_version) -> None:
    if torch_version is None:
        report.problems.append("torch is not installed: `make install` installs the tested CPU stack")
        return
    if fbgemm_version is None:
        report.problems.append("fbgemm is not installed: pip install fbgemm-gpu-cpu (CPU torch) or fbgemm-gpu (CUDA torch)")
        return
    want = FBGEMM_FOR_TORCH.get(_minor(torch_version))
    have = _minor(fbgemm_version)
    if want is None:
        report.notes.append(f"torch {torch_version} is outside the known release table; fbgemm {fbgemm_version} unchecked")
    elif have != want:
        report.problems.append(
            f"fbgemm {fbgemm_version} is built for another torch; torch {torch_version} needs fbgemm "
            f"{want[0]}.{want[1]}.x (pip install {fbgemm_dist}=={want[0]}.{want[1]}.*)"
        )
    cuda_torch = "+cpu" not in torch_version and _torch_has_cuda()
    if cuda_torch and fbgemm_dist and fbgemm_dist.endswith("-cpu"):
        report.problems.append(f"torch {torch_version} is a CUDA build but {fbgemm_dist} is the CPU wheel: install fbgemm-gpu")
    if not report.problems:
        _check_fbgemm_loads(report)


def _torch_has_cuda() -> bool:
    try:
        import torch

        return torch.version.cuda is not None
    except Exception:  # a broken torch is reported by the loading check
        return False


def _check_fbgemm_loads(report: EnvReport) -> None:
    try:
        importlib.import_module("fbgemm_gpu")
        import torch

        torch.ops.fbgemm.jagged_to_padded_dense  # noqa: B018 - resolves the native op
    except Exception as e:  # undefined symbols surface as OSError / RuntimeError here
        report.problems.append(f"fbgemm_gpu does not load: {str(e).splitlines()[0]}")


def _check_torchrec(report: EnvReport, fbgemm_version) -> None:
    torchrec_version = _version("torchrec")
    if torchrec_version is None:
        report.problems.append("torchrec is not installed: pip install --no-deps torchrec==<fbgemm's version>")
        return
    if fbgemm_version and _minor(torchrec_version) != _minor(fbgemm_version):
        report.problems.append(
            f"torchrec {torchrec_version} and fbgemm {fbgemm_version} are from different releases; "
            f"install torchrec=={_minor(fbgemm_version)[0]}.{_minor(fbgemm_version)[1]}.* with --no-deps"
        )


def _check_triton(report: EnvReport, torch_version, triton_version) -> None:
    if torch_version is None:
        return
    pinned = [r for r in (metadata.requires("torch") or []) if re.match(r"(pytorch-)?triton\b", r)]
    if not pinned:
        if triton_version:
            report.notes.append("CPU torch: triton is used through its interpreter (TRITON_INTERPRET=1) only")
        return
    match = re.search(r"==\s*([\w.+]+)", pinned[0])
    if match and triton_version and _minor(match.group(1)) != _minor(triton_version):
        report.problems.append(f"torch {torch_version} was built with triton {match.group(1)}, found {triton_version}")
    if triton_version is None:
        report.problems.append(f"triton missing: torch {torch_version} requires {pinned[0]}")
