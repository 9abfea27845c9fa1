"""Moving batches between devices: every field moves, cached views of a KeyedJaggedTensor included."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.collate import kjt_from_jagged
from recsys.data.pipelineable import TensorDataclass, moved

META = torch.device("meta")


@dataclass
class Pair(TensorDataclass):
    features: KeyedJaggedTensor
    labels: torch.Tensor | None = None


def features() -> KeyedJaggedTensor:
    return kjt_from_jagged({"a": (torch.tensor([1, 2, 3]), torch.tensor([2, 1])),
                            "b": (torch.tensor([4]), torch.tensor([0, 1]))})


def test_a_moved_kjt_answers_to_dict_on_the_new_device_after_a_to_dict_on_the_old_one():
    kjt = features()
    kjt.to_dict()  # caches per-key JaggedTensors on the CPU; TorchRec's KJT.to hands them over unmoved
    for key, jagged in moved(kjt, META).to_dict().items():
        assert jagged.values().device == META and jagged.lengths().device == META, key


def test_a_batch_moves_every_field_and_keeps_none():
    batch = Pair(features(), labels=None)
    batch.features.to_dict()
    out = batch.to(META)
    assert out.labels is None
    assert out.features.values().device == META
    assert all(j.lengths().device == META for j in out.features.to_dict().values())


def test_moving_to_the_same_device_keeps_the_values():
    kjt = features()
    same = moved(kjt, torch.device("cpu"))
    assert torch.equal(same.values(), kjt.values()) and torch.equal(same.lengths(), kjt.lengths())
    assert torch.equal(same.to_dict()["a"].values(), torch.tensor([1, 2, 3]))
