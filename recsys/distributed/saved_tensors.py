"""Measure the activation memory a forward pass keeps for backward: the reference of the estimate.

Autograd hands every tensor it saves for the backward pass to the pack hook of
``torch.autograd.graph.saved_tensors_hooks``. :func:`saved_activation_bytes` sums the bytes of the
distinct storages among them (a tensor saved twice, or two views of one buffer, count once; a view
counts its whole storage, which is what stays allocated), leaving out parameters and whatever
the sharded embedding modules save (their memory is the planner's).

Example::

    nbytes, by_module = saved_activation_bytes(model, lambda: model(batch))
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

_EXCLUDED = (EmbeddingBagCollection, EmbeddingCollection)


def saved_activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> Tuple[int, Dict[str, int]]:
    """Bytes saved for backward while ``forward()`` runs ``model`` (and a loss on its output).

    Returns:
        ``(total, by_module)``: total bytes of distinct saved storages, and the same split by the
        innermost module that was running when each storage was first saved ("-" outside any).
    """
    stack: list[str] = []

    def leave(module, inputs, output) -> None:
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, i, name=name: stack.append(name or "<root>")))
        handles.append(module.register_forward_hook(leave))
    excluded = {name for name, m in model.named_modules() if isinstance(m, _EXCLUDED)}
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters() if p.device.type != "meta"}
    seen: set[int] = set()
    by_module: Counter = Counter()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        where = stack[-1] if stack else "-"
        inside_table = any(where == name or where.startswith(name + ".") for name in excluded)
        if key not in seen and key not in parameters and not inside_table and storage.nbytes():
            seen.add(key)
            by_module[where] += storage.nbytes()
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = forward()
    finally:
        for handle in handles:
            handle.remove()
    del output
    return int(sum(by_module.values())), dict(by_module)
