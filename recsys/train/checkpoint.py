"""Checkpoints: sharded model + optimizer + trainer state, saved atomically and verified on load.

Layout of a checkpoint directory::

    <directory>/
        latest                  text: "step_000001200", replaced atomically after each save
        step_000001000/
        step_000001200/
            state/  or  model/ + optim/   the tensors (DCP, or two torchsnapshot snapshots)
            extra.pt                      trainer state (step, epoch, sampler, RNG, metrics)
            plan.json                     the sharding plan it was saved with (a plan file:
                                          `sharding.plan=<it>` places the tables the same way)
            manifest.json                 written last: files, sizes, sha256, plan, versions

A save writes into a hidden `.tmp-step_<n>` directory; once every rank has finished, rank 0 writes
the manifest, flushes every file and folder to disk (`fsync`), renames the directory into place,
points `latest` at it (temp file + `os.replace`) and removes checkpoints beyond `keep_last`: only
steps older than the one just saved, each renamed to a hidden `.trash-step_<n>` before it is
deleted. A crash (or a host crash) at any point leaves complete `step_*` directories only.

`resume_step()` is the step a resume continues from: the one `latest` names or, when `latest` is
missing (a kill between the rename and writing `latest`), the newest `step_*` that verifies.

A load checks the manifest first: a missing manifest means a partial save, a size or sha256 that
differs means a corrupted file. Both raise `CheckpointError`; nothing is loaded silently.
`extra.pt` is read with `torch.load(weights_only=True)`: tensors and plain Python values only, so
a crafted checkpoint cannot run code (whoever can write it can rewrite the manifest too).

Backends:

- "dcp" (default): `torch.distributed.checkpoint` of `{"model": model.state_dict(), "optim":
  optimizer.state_dict()}`. Reshards: a checkpoint saved on N ranks with one plan loads on M
  ranks with another. Optimizer state of a table that moved between data-parallel and sharded
  does not carry over (its keys differ); that table's optimizer starts afresh, with a warning.
- "torchsnapshot": model and optimizer as two snapshots (torchsnapshot 0.1.0 cannot restore
  them as one). Same world size and plan only: it cannot reshard. Loading it on another world
  size or plan is a `CheckpointError` that names both fixes: resume on the saved world size with
  `sharding.plan=<checkpoint>/plan.json`, or save with "dcp".

Example::

    manager = CheckpointManager(run_dir / "checkpoints", keep_last=3)
    manager.save(step, dmp, optimizer, extra={"step": step, "rng": capture_rng_state()})
    ...
    extra = manager.load(dmp, optimizer)  # latest checkpoint
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import pickle
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

import numpy as np

from recsys.atomic_files import fsync_dir, fsync_tree, write_text_atomic
from recsys.distributed.plan_io import save_plan
from recsys.distributed.sharding import plan_to_dict
from recsys.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("dcp", "torchsnapshot")
MANIFEST = "manifest.json"
LATEST = "latest"
EXTRA = "extra.pt"
PLAN = "plan.json"
_STEP_PATTERN = re.compile(r"^step_(\d{9})$")
_TRASH_PREFIX = ".trash-"
_HASH_CHUNK = 1 << 20
_VERSIONED_PACKAGES = ("torch", "fbgemm-gpu-cpu", "fbgemm-gpu", "torchrec", "torchsnapshot")


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _library_versions() -> Dict[str, str]:
    versions = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plan_of(model: nn.Module) -> Optional[Dict[str, Any]]:
    plan = getattr(model, "plan", None)
    return plan_to_dict(plan) if plan is not None else None


def _flat_tensor_keys(tree: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of the tensors in nested dicts, as DCP names them (`model.ebc.t0.weight`)."""
    if isinstance(tree, torch.Tensor):
        yield prefix
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flat_tensor_keys(value, f"{prefix}.{key}" if prefix else str(key))


def _init_lazy_optimizer_state(optimizer: Any) -> None:
    """Create the state torch optimizers build lazily at their first step, so a load can fill it.

    Only sub-optimizers with no state yet are touched (a zero-gradient step, then grads cleared);
    fused embedding optimizers hold their state from the start.
    """
    parts = getattr(optimizer, "optimizers", [("", optimizer)])
    for _, part in parts:
        if hasattr(part, "init_state") and not part.state and part.params:
            part.init_state()
            part.zero_grad(set_to_none=True)


def _warn_on_version_change(path: Path, saved: Dict[str, str]) -> None:
    current = _library_versions()
    changed = {
        package: f"{version} -> {current[package]}"
        for package, version in saved.items()
        if package in current and current[package] != version
    }
    if changed:
        logger.warning("checkpoint %s was saved with other library versions: %s", path, changed)


class CheckpointManager:
    """Saves and loads numbered checkpoints of a (sharded) model, its optimizer and trainer state.

    Every rank calls `save` and `load` (they are collective when a process group exists).
    `directory` must be on storage all ranks share.

    Args:
        directory (str | Path): where the `step_*` directories and `latest` live.
        backend (str): "dcp" (reshardable) or "torchsnapshot" (same plan only).
        keep_last (int): number of checkpoints kept; older ones are removed after each save
            (never the one `latest` points to).
    """

    def __init__(self, directory: str | Path, backend: str = "dcp", keep_last: int = 3) -> None:
        if backend not in BACKENDS:
            raise CheckpointError(
                f"checkpoint backend {backend!r} is not supported; use one of {list(BACKENDS)}"
            )
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be >= 1, got {keep_last}; keep at least one")
        self.directory = Path(directory)
        self.backend = backend
        self.keep_last = keep_last

    # ------------------------------------------------------------------ listing

    def steps(self) -> List[int]:
        """Steps of the complete-looking `step_*` directories, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_STEP_PATTERN.match(entry.name) for entry in self.directory.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def latest_step(self) -> Optional[int]:
        """The step `latest` points to, or None when nothing was saved yet."""
        pointer = self.directory / LATEST
        if not pointer.exists():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        match = _STEP_PATTERN.match(name)
        if match is None:
            raise CheckpointError(
                f"{pointer} holds {name!r}, not a step directory name like 'step_000000100'; "
                "write the name of an existing step directory into it, or delete it"
            )
        return int(match.group(1))

    def path_of(self, step: int) -> Path:
        return self.directory / step_dir_name(step)

    def resume_step(self) -> Optional[int]:
        """The step a resume continues from: `latest`, else the newest step that verifies.

        `latest` is written after the step directory's rename, so a job killed between the two
        leaves a complete checkpoint and no `latest`; this finds it. None when nothing verifies.
        """
        latest = self.latest_step()
        if latest is not None:
            return latest
        for step in reversed(self.steps()):
            try:
                self.verify(self.path_of(step))
            except CheckpointError as error:
                logger.warning("skipping checkpoint step %d: %s", step, error)
                continue
            logger.warning("%s is missing: resuming from the newest complete checkpoint, step %d",
                           self.directory / LATEST, step)
            return step
        return None

    # ------------------------------------------------------------------ save

    def save(self, step: int, model: nn.Module, optimizer: Any, extra: Dict[str, Any]) -> Path:
        """Write checkpoint `step` (collective: every rank calls it).

        Args:
            step (int): global training step; names the directory `step_<step:09d>`.
            model (nn.Module): the model (usually `DistributedModelParallel`).
            optimizer: its optimizer (`CombinedOptimizer` from `build_optimizer`).
            extra (dict): trainer state, saved by rank 0 with `torch.save`.

        Returns:
            Path: the final checkpoint directory.
        """
        final = self.path_of(step)
        temp = self.directory / f".tmp-{final.name}"
        if _rank() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir()
        _barrier()
        try:
            self._write_tensors(temp, model, optimizer)
            if _rank() == 0:
                torch.save(_plain(extra, EXTRA), temp / EXTRA)
                self._write_plan(temp, model)
            _barrier()
            if _rank() == 0:
                self._write_manifest(temp, step, model)
                fsync_tree(temp)  # the contents reach the disk before the name does
                self._move_into_place(temp, final)
                fsync_dir(self.directory)
                write_text_atomic(self.directory / LATEST, final.name + "\n")
                self._prune(step)
        except BaseException:  # DCP's CheckpointException derives from BaseException
            if _rank() == 0:
                shutil.rmtree(temp, ignore_errors=True)
            raise
        _barrier()
        return final

    def _write_tensors(self, temp: Path, model: nn.Module, optimizer: Any) -> None:
        if self.backend == "dcp":
            state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
            dcp.save(state, checkpoint_id=temp / "state")
        else:
            from torchsnapshot import Snapshot

            Snapshot.take(path=str(temp / "model"), app_state={"model": model})
            Snapshot.take(path=str(temp / "optim"), app_state={"optim": optimizer})

    @staticmethod
    def _write_plan(temp: Path, model: nn.Module) -> None:
        plan = getattr(model, "plan", None)
        if plan is None:
            return
        device = getattr(model, "device", torch.device("cpu"))
        try:
            save_plan(plan, temp / PLAN, _world_size(), torch.device(device).type)
        except ConfigError as error:  # a placement plan files cannot hold: the manifest still has it
            logger.warning("checkpoint saved without %s: %s", PLAN, error)

    def _write_manifest(self, temp: Path, step: int, model: nn.Module) -> None:
        files = [
            {
                "path": path.relative_to(temp).as_posix(),
                "size": path.stat().st_size,
                "sha256": _sha256(path),
            }
            for path in sorted(temp.rglob("*"))
            if path.is_file()
        ]
        manifest = {
            "step": step,
            "backend": self.backend,
            "world_size": _world_size(),
            "files": files,
            "plan": _plan_of(model),
            "versions": _library_versions(),
        }
        write_text_atomic(temp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))

    def _move_into_place(self, temp: Path, final: Path) -> None:
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            old = self.directory / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(temp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, final)

    def _prune(self, saved: Optional[int] = None) -> None:
        """Remove checkpoints beyond `keep_last` and leftovers of killed saves and prunes.

        Only steps up to `saved` (the step just written) count and go: newer ones (left by a run
        this one did not resume from) and the one `latest` names are never removed. A removal
        first renames the directory to `.trash-step_<n>`, so a kill mid-way leaves no partial
        `step_*` directory behind.
        """
        for leftover in [*self.directory.glob(".tmp-step_*"), *self.directory.glob(f"{_TRASH_PREFIX}step_*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        candidates = [step for step in self.steps() if saved is None or step <= saved]
        keep: Set[int] = set(candidates[-self.keep_last :])
        latest = self.latest_step()
        if latest is not None:
            keep.add(latest)
        for step in candidates:
            if step not in keep:
                trash = self.directory / f"{_TRASH_PREFIX}{step_dir_name(step)}"
                os.replace(self.path_of(step), trash)
                fsync_dir(self.directory)
                shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ load

    def load(self, model: nn.Module, optimizer: Any, step: Optional[int] = None) -> Dict[str, Any]:
        """Restore `model` and `optimizer` in place from checkpoint `step` (default: latest).

        Args:
            model (nn.Module): the model to fill (same architecture; any plan with "dcp").
            optimizer: its optimizer.
            step (int | None): which checkpoint; None loads the one `latest` points to.

        Returns:
            dict: the `extra` trainer state given to `save`.
        """
        path = self._resolve(step)
        manifest = self.verify(path)
        backend = manifest.get("backend")
        if backend != self.backend:
            raise CheckpointError(
                f"{path} was saved with backend {backend!r}, this manager uses {self.backend!r}; "
                f"create the CheckpointManager with backend={backend!r}"
            )
        _warn_on_version_change(path, manifest.get("versions", {}))
        _init_lazy_optimizer_state(optimizer)
        if self.backend == "dcp":
            self._load_dcp(path, model, optimizer)
        else:
            self._load_torchsnapshot(path, manifest, model, optimizer)
        return _load_extra(path / EXTRA)

    def _resolve(self, step: Optional[int]) -> Path:
        if step is None:
            step = self.resume_step()
            if step is None:
                raise CheckpointError(
                    f"no checkpoint in {self.directory} ({LATEST} is missing and no step_* verifies); "
                    "train first, or pass the directory that holds the step_* checkpoints"
                )
        path = self.path_of(step)
        if not path.is_dir():
            raise CheckpointError(
                f"checkpoint {path} does not exist; available steps: {self.steps()}"
            )
        return path

    def verify(self, path: Path) -> Dict[str, Any]:
        """Check every file of checkpoint `path` against its manifest; return the manifest."""
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise CheckpointError(
                f"{manifest_path} is missing: {path} is a partial save (the job stopped while "
                "saving); load an earlier step or delete this directory"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{manifest_path} is not valid JSON ({error}); the checkpoint is corrupted: "
                "load an earlier step or delete this directory"
            ) from error
        for entry in manifest["files"]:
            self._verify_file(path, entry)
        return manifest

    @staticmethod
    def _verify_file(path: Path, entry: Dict[str, Any]) -> None:
        file = path / entry["path"]
        fix = "the checkpoint is corrupted: load an earlier step or delete this directory"
        if not file.is_file():
            raise CheckpointError(f"{file} listed in {MANIFEST} is missing; {fix}")
        size = file.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{file} has {size} bytes, {MANIFEST} says {entry['size']}; {fix}"
            )
        if _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{file} does not match its sha256 in {MANIFEST}; {fix}")

    def _load_dcp(self, path: Path, model: nn.Module, optimizer: Any) -> None:
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        self._check_stored_keys(path / "state", state)
        try:
            dcp.load(
                state,
                checkpoint_id=path / "state",
                planner=DefaultLoadPlanner(allow_partial_load=True),
            )
        except CheckpointException as error:
            raise CheckpointError(
                f"cannot read {path / 'state'}: {error}; the checkpoint does not fit this "
                "model (different architecture or table sizes?)"
            ) from None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])

    @staticmethod
    def _check_stored_keys(state_path: Path, state: Dict[str, Any]) -> None:
        """Model tensors must all be stored; optimizer state may be missing for moved tables."""
        stored = set(FileSystemReader(state_path).read_metadata().state_dict_metadata)
        missing = [key for key in _flat_tensor_keys(state) if key not in stored]
        missing_model = [key for key in missing if key.startswith("model.")]
        if missing_model:
            raise CheckpointError(
                f"{state_path} lacks model tensors {missing_model[:5]} "
                f"({len(missing_model)} in all); it was saved from a different model"
            )
        if missing:
            logger.warning(
                "checkpoint %s has no optimizer state for %d tensors (e.g. %s): tables moved "
                "between data-parallel and sharded start their optimizer state afresh",
                state_path, len(missing), missing[0],
            )

    def _load_torchsnapshot(
        self, path: Path, manifest: Dict[str, Any], model: nn.Module, optimizer: Any
    ) -> None:
        from torchsnapshot import Snapshot

        saved_world, world = manifest.get("world_size"), _world_size()
        same_plan = manifest.get("plan") == _plan_of(model)
        if saved_world != world or not same_plan:
            difference = (
                f"of a {saved_world}-rank job (this job has {world} ranks)" if saved_world != world
                else "saved with another sharding plan than this model's"
            )
            same_placement = (
                f"resume on {saved_world} ranks with sharding.plan={path / PLAN} (the tables placed as saved)"
                if (path / PLAN).is_file()
                else f"resume on {saved_world} ranks with the sharding it was saved with"
            )
            raise CheckpointError(
                f"{path} is a torchsnapshot checkpoint {difference}: cannot reshard with torchsnapshot; "
                f"use backend dcp (train.checkpoint_backend=dcp: its checkpoints load on any world size and plan), "
                f"or {same_placement}"
            )
        Snapshot(path=str(path / "model")).restore(app_state={"model": model})
        Snapshot(path=str(path / "optim")).restore(app_state={"optim": optimizer})


def _plain(value: Any, where: str) -> Any:
    """`value` with NumPy arrays as tensors and NumPy scalars as Python numbers, recursively, so it
    loads with `torch.load(weights_only=True)`; anything else that is not plain is refused."""
    if isinstance(value, dict):
        return {key: _plain(item, where) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(item, where) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    raise CheckpointError(
        f"{where} can hold tensors and plain Python values only, got {type(value).__name__}; "
        "convert it (e.g. to a dict of numbers) before saving"
    )


def _load_extra(path: Path) -> Dict[str, Any]:
    """The trainer state of a checkpoint, unpickled with `weights_only=True` (no code can run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values, and was refused: loading it "
            f"could run code. Only load checkpoints you trust; delete this one or load an earlier step "
            f"({str(error).splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: {error}; the checkpoint is corrupted: load an earlier step") from None
