import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

import recsys.train.checkpoint as checkpoint_module
from recsys.distributed.optimizers import (
    DenseOptimizerConfig,
    FusedOptimizerConfig,
    build_optimizer,
)
from recsys.distributed.process_group import _free_port, init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model
from recsys.errors import CheckpointError
from recsys.train.checkpoint import CheckpointManager
from recsys.train.reproducibility import capture_rng_state, restore_rng_state

ROWS = (40, 30, 20)
DIM = 8
FEATURES = ["f0", "f1", "f2"]
ROW_WISE = ShardingConfig(
    {"t0": {"sharding_types": ["row_wise"]}, "t1": {"sharding_types": ["table_wise"]},
     "t2": {"sharding_types": ["data_parallel"]}}
)
MOVED = ShardingConfig(
    {"t0": {"sharding_types": ["column_wise"]}, "t1": {"sharding_types": ["data_parallel"]},
     "t2": {"sharding_types": ["table_wise"]}}
)


class TinyRanker(nn.Module):
    """Three pooled tables + a Linear: KJT of FEATURES -> [B, 1]."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(name=f"t{i}", embedding_dim=DIM, num_embeddings=rows,
                                   feature_names=[FEATURES[i]])
                for i, rows in enumerate(ROWS)
            ],
            device=device,
        )
        self.linear = nn.Linear(len(ROWS) * DIM, 1, device=device)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(features)
        return self.linear(torch.cat([pooled[name] for name in FEATURES], dim=1))  # [B, 1]


def batch(seed: int, size: int = 8) -> KeyedJaggedTensor:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 4, (len(ROWS), size), generator=generator)
    values = [
        torch.randint(0, rows, (int(n.sum()),), generator=generator)
        for rows, n in zip(ROWS, lengths)
    ]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES, values=torch.cat(values), lengths=lengths.flatten().to(torch.int32)
    )


def build(ctx, sharding=ROW_WISE, seed=0):
    torch.manual_seed(seed)
    dmp = shard_model(TinyRanker(torch.device("meta")), ctx, sharding,
                      FusedOptimizerConfig("row_wise_adagrad", lr=0.1))
    return dmp, build_optimizer(dmp, DenseOptimizerConfig("adam", lr=0.01))


def train(dmp, optimizer, seeds) -> None:
    for seed in seeds:
        optimizer.zero_grad()
        dmp(batch(seed)).pow(2).mean().backward()
        optimizer.step()


def full(value):
    """Plain tensor of a (world of one) ShardedTensor, plain tensors unchanged; recursive."""
    if isinstance(value, dict):
        return {key: full(item) for key, item in value.items()}
    if hasattr(value, "local_shards"):
        out = torch.empty(value.size())
        for shard in value.local_shards():
            offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            out[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))] = shard.tensor
        return out
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert a == b


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed()
    yield context
    teardown(context)


@pytest.mark.parametrize("backend", ["dcp", "torchsnapshot"])
def test_round_trip_restores_weights_optimizer_and_extra(ctx, tmp_path, backend):
    dmp, optimizer = build(ctx)
    train(dmp, optimizer, seeds=[1, 2])
    manager = CheckpointManager(tmp_path, backend=backend)
    extra = {"step": 2, "epoch": 0, "rng": capture_rng_state(), "metrics": {"auc": 0.5}}
    path = manager.save(2, dmp, optimizer, extra)
    assert path == tmp_path / "step_000000002" and manager.latest_step() == 2
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["backend"] == backend and manifest["world_size"] == 1
    assert manifest["plan"]["ebc"]["t0"]["sharding_type"] == "row_wise"
    assert "torch" in manifest["versions"] and "torchrec" in manifest["versions"]

    restored, restored_optimizer = build(ctx, seed=123)
    loaded = manager.load(restored, restored_optimizer)
    assert loaded["step"] == 2 and loaded["metrics"] == {"auc": 0.5}
    restore_rng_state(loaded["rng"])
    assert_same(full(restored.state_dict()), full(dmp.state_dict()))
    assert_same(full(restored_optimizer.state_dict()), full(optimizer.state_dict()))

    train(dmp, optimizer, seeds=[3])
    train(restored, restored_optimizer, seeds=[3])
    assert_same(full(restored.state_dict()), full(dmp.state_dict()))


def test_dcp_reshards_to_another_plan(ctx, tmp_path, caplog):
    dmp, optimizer = build(ctx, ROW_WISE)
    train(dmp, optimizer, seeds=[1])
    manager = CheckpointManager(tmp_path)
    manager.save(1, dmp, optimizer, {"step": 1})
    moved, moved_optimizer = build(ctx, MOVED, seed=5)
    manager.load(moved, moved_optimizer)
    assert_same(full(moved.state_dict()), full(dmp.state_dict()))
    # t0 moved row-wise -> column-wise and stays fused: its optimizer state comes along
    key = "fused.ebc.embedding_bags.t0.weight"
    assert_same(full(moved_optimizer.state_dict()["state"][key]),
                full(optimizer.state_dict()["state"][key]))
    # t1 / t2 moved between sharded and data-parallel: their optimizer state restarts, loudly
    assert "start their optimizer state afresh" in caplog.text


def _fail(*args, **kwargs):
    raise RuntimeError("disk full")


@pytest.mark.parametrize("stage", ["tensors", "manifest"])
def test_failed_save_keeps_latest_on_the_previous_checkpoint(ctx, tmp_path, monkeypatch, stage):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path)
    manager.save(1, dmp, optimizer, {"step": 1})
    if stage == "tensors":
        real_save = checkpoint_module.dcp.save

        def save_then_fail(state, checkpoint_id):  # some files written, then the crash
            real_save(state, checkpoint_id=checkpoint_id)
            raise RuntimeError("disk full")

        monkeypatch.setattr(checkpoint_module.dcp, "save", save_then_fail)
    else:
        monkeypatch.setattr(CheckpointManager, "_write_manifest", _fail)
    with pytest.raises(RuntimeError, match="disk full"):
        manager.save(2, dmp, optimizer, {"step": 2})
    assert manager.latest_step() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000000001"]
    assert manager.load(dmp, optimizer)["step"] == 1


def _state_file(path: Path) -> Path:
    return max((f for f in (path / "state").iterdir() if f.suffix == ".distcp"),
               key=lambda f: f.stat().st_size)


def test_truncated_edited_or_unmanifested_checkpoints_are_refused(ctx, tmp_path):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path)
    path = manager.save(1, dmp, optimizer, {"step": 1})
    data = _state_file(path)
    original = data.read_bytes()

    data.write_bytes(original[:-10])
    with pytest.raises(CheckpointError, match=r"distcp has \d+ bytes"):
        manager.load(dmp, optimizer)

    edited = bytearray(original)
    edited[len(edited) // 2] ^= 0xFF
    data.write_bytes(bytes(edited))
    with pytest.raises(CheckpointError, match="sha256"):
        manager.load(dmp, optimizer)

    data.write_bytes(original)
    manager.load(dmp, optimizer)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="partial save"):
        manager.load(dmp, optimizer)


def test_keep_last_prunes_older_checkpoints(ctx, tmp_path):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path, keep_last=2)
    (tmp_path / ".tmp-step_000000005").mkdir()  # left by a save that was killed
    for step in (10, 20, 30, 40):
        manager.save(step, dmp, optimizer, {"step": step})
    assert manager.steps() == [30, 40] and manager.latest_step() == 40
    assert not (tmp_path / ".tmp-step_000000005").exists()
    (tmp_path / "latest").write_text("step_000000030\n")  # e.g. pointed back by hand
    manager.keep_last = 1
    manager._prune()
    assert manager.steps() == [30, 40]


def test_wrong_backend_missing_checkpoint_and_bad_settings_are_refused(ctx, tmp_path):
    dmp, optimizer = build(ctx)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        CheckpointManager(tmp_path).load(dmp, optimizer)
    CheckpointManager(tmp_path).save(1, dmp, optimizer, {"step": 1})
    with pytest.raises(CheckpointError, match="backend='dcp'"):
        CheckpointManager(tmp_path, backend="torchsnapshot").load(dmp, optimizer)
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointManager(tmp_path).load(dmp, optimizer, step=7)
    with pytest.raises(CheckpointError, match="torchsnapshot"):
        CheckpointManager(tmp_path, backend="pickle")


def test_torchsnapshot_refuses_another_plan(ctx, tmp_path):
    dmp, optimizer = build(ctx, ROW_WISE)
    manager = CheckpointManager(tmp_path, backend="torchsnapshot")
    manager.save(1, dmp, optimizer, {"step": 1})
    moved, moved_optimizer = build(ctx, MOVED)
    with pytest.raises(CheckpointError, match="cannot reshard with torchsnapshot; use backend dcp"):
        manager.load(moved, moved_optimizer)


def _train_and_save_on_two_ranks(rank: int, port: int, directory: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    context = init_distributed()
    dmp, optimizer = build(context)
    train(dmp, optimizer, seeds=[rank + 1])
    CheckpointManager(directory).save(1, dmp, optimizer, {"step": 1, "world": 2})
    del dmp, optimizer
    teardown(context)


def test_saved_on_two_ranks_loads_on_one(ctx, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    mp.start_processes(_train_and_save_on_two_ranks, args=(_free_port(), str(tmp_path)),
                       nprocs=2, start_method="spawn")
    manager = CheckpointManager(tmp_path)
    manifest = json.loads((tmp_path / "step_000000001" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    dmp, optimizer = build(ctx, MOVED, seed=9)
    assert manager.load(dmp, optimizer) == {"step": 1, "world": 2}
    dcp_to_torch_save(tmp_path / "step_000000001" / "state", tmp_path / "plain.pt")
    stored = torch.load(tmp_path / "plain.pt", weights_only=False)["model"]
    assert_same(full(dmp.state_dict()), {key: stored[key] for key in dmp.state_dict()})


class _RunsCode:
    """A pickled payload: unpickling it calls `marker.touch()` (stands for any command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_extra_with_a_pickled_payload_is_refused_and_runs_nothing(ctx, tmp_path):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(1, dmp, optimizer, {"step": 1, "rng": capture_rng_state()})
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "payload": _RunsCode(marker)}, path / "extra.pt")
    (path / "manifest.json").unlink()
    manager._write_manifest(path, 1, dmp)  # the attacker rewrites the manifest too
    with pytest.raises(CheckpointError, match="could run code"):
        manager.load(dmp, optimizer)
    assert not marker.exists()


def test_rng_state_and_numpy_values_round_trip_through_weights_only_load(ctx, tmp_path):
    import numpy as np

    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path)
    extra = {"step": 3, "rng": capture_rng_state(), "best": {"ndcg@10": np.float64(0.25)}, "ids": np.arange(3)}
    manager.save(3, dmp, optimizer, extra)
    expected = torch.rand(2)
    loaded = manager.load(dmp, optimizer)
    restore_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(2), expected)
    assert loaded["best"] == {"ndcg@10": 0.25} and loaded["ids"].tolist() == [0, 1, 2]


def test_missing_latest_resumes_from_the_newest_complete_step(ctx, tmp_path, monkeypatch):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path)
    for step in (10, 20):
        manager.save(step, dmp, optimizer, {"step": step})
    (tmp_path / "latest").unlink()  # killed between the step's rename and writing `latest`
    (tmp_path / "step_000000020" / "manifest.json").unlink()  # and the newest one is damaged
    assert manager.resume_step() == 10
    assert manager.load(dmp, optimizer)["step"] == 10


def test_kill_between_rename_and_latest_on_the_first_save_still_resumes(ctx, tmp_path, monkeypatch):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path)

    real_write = checkpoint_module.write_text_atomic

    def killed(path, text):
        if Path(path).name == "latest":
            raise KeyboardInterrupt("killed")
        return real_write(path, text)

    monkeypatch.setattr(checkpoint_module, "write_text_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        manager.save(5, dmp, optimizer, {"step": 5})
    monkeypatch.undo()
    assert manager.latest_step() is None
    assert manager.load(dmp, optimizer)["step"] == 5


def test_prune_never_removes_steps_newer_than_the_one_saved(ctx, tmp_path):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        manager.save(step, dmp, optimizer, {"step": step})
    (tmp_path / "latest").unlink()
    fresh = CheckpointManager(tmp_path, keep_last=1)  # a run that did not resume from them
    fresh.save(5, dmp, optimizer, {"step": 5})
    assert fresh.steps() == [5, 20, 30]


def test_kill_during_pruning_leaves_no_partial_step_directory(ctx, tmp_path, monkeypatch):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(10, dmp, optimizer, {"step": 10})
    real_rmtree = checkpoint_module.shutil.rmtree

    def killed_halfway(path, ignore_errors=False):
        path = Path(path)
        if (path / "manifest.json").exists():
            (path / "manifest.json").unlink()  # part of the directory is gone, then the kill
            raise KeyboardInterrupt("killed")
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        manager.save(20, dmp, optimizer, {"step": 20})
    monkeypatch.undo()
    for step in manager.steps():
        manager.verify(manager.path_of(step))  # every step_* left is complete
    assert manager.steps() == [20]
    manager.save(30, dmp, optimizer, {"step": 30})  # the next prune clears the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000000030"]


def test_files_and_directories_reach_the_disk_before_the_rename(ctx, tmp_path, monkeypatch):
    dmp, optimizer = build(ctx)
    manager = CheckpointManager(tmp_path / "ckpt")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    manager.save(1, dmp, optimizer, {"step": 1})
    rename = events.index(("replace", str(tmp_path / "ckpt" / ".tmp-step_000000001")))
    flushed = {path for kind, path in events[:rename] if kind == "fsync"}
    temp = str(tmp_path / "ckpt" / ".tmp-step_000000001")
    assert {f"{temp}/extra.pt", f"{temp}/manifest.json", temp, f"{temp}/state"} <= flushed
    assert ("fsync", str(tmp_path / "ckpt")) in events[rename:]
