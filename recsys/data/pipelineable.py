"""Moving a dataclass batch of tensors between devices, as TorchRec's train pipelines expect.

A batch dataclass whose fields are tensors, KeyedJaggedTensors or JaggedTensors (or None) derives
from :class:`TensorDataclass` and gets ``to``, ``record_stream`` and ``pin_memory`` field by field.
"""

from __future__ import annotations

import dataclasses

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


def pytree_dataclass(cls: type) -> type:
    """Class decorator (above ``@dataclass``): registers ``cls`` as a pytree node over its fields.

    Example::

        @pytree_dataclass
        @dataclass
        class Pair(TensorDataclass):
            a: torch.Tensor
            b: torch.Tensor | None = None

        leaves, spec = torch.utils._pytree.tree_flatten(Pair(torch.zeros(2)))  # [tensor([0., 0.])]
    """
    torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
    return cls


def moved(value, device: torch.device, non_blocking: bool = False):
    """``value.to(device)``; a KeyedJaggedTensor also drops its cached ``to_dict()``.

    TorchRec's ``KeyedJaggedTensor.to`` hands the cached per-key JaggedTensors of the source to the
    copy unmoved, so a batch whose ``to_dict()`` ran before the move would answer ``to_dict()`` with
    tensors on the old device.
    """
    result = value.to(device=device, non_blocking=non_blocking)
    if isinstance(result, KeyedJaggedTensor) and result is not value:
        result._jt_dict = None
    return result


class TensorDataclass(Pipelineable):
    """Pipelineable over every (non-None) field of a dataclass."""

    def _map(self, fn):
        values = {f.name: None if (v := getattr(self, f.name)) is None else fn(v) for f in dataclasses.fields(self)}
        return type(self)(**values)

    def to(self, device: torch.device, non_blocking: bool = False):
        return self._map(lambda v: moved(v, device, non_blocking))

    def record_stream(self, stream) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                value.record_stream(stream)

    def pin_memory(self):
        return self._map(lambda v: v.pin_memory())
