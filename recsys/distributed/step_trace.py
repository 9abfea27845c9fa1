"""Count the ops and the peak of live tensor bytes of one training step: the references of the
plan's op count (host time) and peak-memory estimates.

A :class:`StepTrace` (a ``TorchDispatchMode``) sees every aten op that runs while it is active,
forward, backward (autograd hands the mode on to its threads) and the optimizer step alike. It
counts them (each is one dispatch, and on a GPU at most one kernel launch) and keeps the storages
of their outputs in weak references: after each op it drops the storages that died and adds the
new ones, so ``peak_bytes`` is the most bytes of op-made tensors alive at once, on any device
(CPU included), without an allocator's help. Tensors that existed before the trace started
(parameters, optimizer state, the batch) are not counted: add them yourself.

Example::

    with StepTrace() as trace:
        model(batch).backward()
        optimizer.step()
    trace.ops, trace.peak_bytes
"""

from __future__ import annotations

from collections import Counter
from typing import Dict

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class StepTrace(TorchDispatchMode):
    """Counts dispatched aten ops and tracks the peak of live op-made storage bytes.

    Attributes:
        ops: aten ops dispatched while active.
        by_op: the same, per op name (``aten.mm.default``...).
        live_bytes: bytes of op-made storages alive now.
        peak_bytes: the largest ``live_bytes`` seen after any op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.by_op: Counter = Counter()
        self._live: Dict[int, tuple] = {}  # storage key -> (weak ref, bytes)
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_op: tuple = (0, "")  # (ops dispatched so far, the op) when the peak was reached
        self.keep_peak_sizes = False
        self.peak_sizes: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.by_op[str(func)] += 1
        self._drop_dead()
        inputs = {leaf.untyped_storage()._cdata for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self._add(leaf.untyped_storage(), inputs)
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes, self.peak_op = self.live_bytes, (self.ops, str(func))
            if self.keep_peak_sizes:
                self.peak_sizes = sorted((n for _, n in self._live.values()), reverse=True)
        return out

    def _add(self, storage, inputs) -> None:
        key = storage._cdata
        if key in self._live and not self._live[key][0].expired():
            return  # a view or an in-place result of a tracked storage
        if key in inputs:
            return  # a view or an in-place result of a tensor made before the trace (a parameter)
        self._live[key] = (StorageWeakRef(storage), storage.nbytes())
        self.live_bytes += storage.nbytes()

    def _drop_dead(self) -> None:
        dead = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in dead:
            self.live_bytes -= self._live.pop(key)[1]
