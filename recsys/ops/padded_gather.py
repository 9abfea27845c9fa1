"""Rows of a jagged tensor gathered into a padded batch, zeros at padding, with a backward that
stays parallel when many slots read one row.

The obvious gather, ``torch.cat([values, zeros])[index]`` with every padding slot pointing at the
zero row, has ``index_put_(accumulate=True)`` as its backward. On CUDA that op sorts the index and
adds the gradients of each repeated index one after another, so the padding slots (all one row)
become one long serial sum: at batch 1,024 of histories of 10-50 items (~21,000 padding slots, D =
64) its forward + backward took 13.9 ms on an H100 (2026-12-06) against 0.18 ms for
``index_select``, whose backward is ``index_add_`` (atomic adds, parallel over rows and
features); 23 ms against 3.3 ms on one CPU core. BST's training step on that H100 measured
28.3 ms at batch 1,024 against 17.1 ms at batch 64 with the obvious gather.
"""

from __future__ import annotations

import torch

__all__ = ["gather_padded"]


def gather_padded(values: torch.Tensor, index: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``values[index]`` where ``real``, zeros elsewhere.

    Args:
        values: ``[V, *F]`` the jagged rows' values.
        index: ``[*S]`` int64 row of ``values`` each slot reads (any value where not ``real``).
        real: ``[*S]`` bool, False at padding.

    Returns:
        ``[*S, *F]``; its gradient reaches ``values`` through ``index_add_``.
    """
    with_zero_row = torch.cat([values, values.new_zeros((1, *values.shape[1:]))])  # [V + 1, *F]
    rows = torch.where(real, index, values.shape[0])  # [*S]: padding reads the zero row
    return with_zero_row.index_select(0, rows.reshape(-1)).view(*rows.shape, *values.shape[1:])
