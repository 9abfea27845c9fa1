"""cuDNN GRU peak memory on the GPU, measured by the allocator and planned by the dense estimate.

Used by ``benchmarks/cudnn_gru_peak.py`` and the CUDA test of the estimate's cuDNN term.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from recsys.distributed.dense_estimate import _gru, _Tally


def gru_peak_bytes(hidden: int, dim: int, length: int, batch_size: int) -> Tuple[int, int]:
    """(measured, planned) peak bytes of ``nn.GRU(dim, hidden)`` forward + backward over a
    ``[batch_size, length, dim]`` input on CUDA, beyond the input and the parameters: measured is
    ``torch.cuda.max_memory_allocated``, planned is the estimate's saved bytes plus its cuDNN
    forward transient."""
    torch.cuda.empty_cache()
    gru = nn.GRU(dim, hidden, batch_first=True).cuda()
    x = torch.randn(batch_size, length, dim, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out, _ = gru(x)
    out.sum().backward()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    tally = _Tally()
    _gru(tally, gru, batch_size, length, dim, cudnn=True)
    return measured, tally.bytes["sequence_encoder"] + tally.transient["forward"]
