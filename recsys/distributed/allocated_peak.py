"""The peak of bytes the allocator hands out while a function runs, on CPU: what
``torch.cuda.max_memory_allocated`` measures on a GPU, without one.

The profiler's memory events (``profile_memory=True``) record every allocation and free the
device's allocator makes, in order. Summed in time order they give the bytes allocated during the
call at each moment; the peak is their maximum. Tensors that existed before the call (parameters,
optimizer state, the batch) are not counted: add them yourself.

Unlike :class:`~recsys.distributed.step_trace.StepTrace` (a ``TorchDispatchMode``), this changes
nothing about what runs: while a dispatch mode is active, autograd takes the out-of-place
("composite compliant") branch of some backward formulas (``gather``'s gradient is then a
``scatter_add`` into a fresh buffer instead of ``scatter_add_`` into its zeros, one more
``[N, U]`` buffer), so a mode sees more bytes alive than the real step holds.

Example::

    peak, end = allocated_peak_bytes(lambda: model(batch).backward())
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch


def allocated_peak_bytes(fn: Callable[[], object], device_type: str = "cpu") -> Tuple[int, int]:
    """(peak, end): the most bytes allocated on ``device_type`` at once while ``fn()`` runs, counted
    from zero at its start, and the bytes still allocated at its end."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type().name.lower() == device_type]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak, live
