"""Peak memory of cuDNN's GRU (``nn.GRU`` forward + backward) against the planner's estimate.

For every (hidden h, input d, length L, batch B) of the grid, the allocator's peak
(``torch.cuda.max_memory_allocated``) beyond the input and the parameters, in float32 values per
token, beside what ``recsys.distributed.dense_estimate._gru`` plans on an accelerator (the saved
``d + 7 h`` plus the cuDNN transient). Prints a table and writes ``cudnn_gru_peak.json``.

On the GPU machine::

    python benchmarks/cudnn_gru_peak.py --out runs/bench/cudnn-gru
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from recsys.atomic_files import write_json_atomic
from recsys.distributed.gru_peak import gru_peak_bytes


def measure(hidden: int, dim: int, length: int, batch_size: int) -> dict:
    """One grid point: measured and planned peak bytes of a forward + backward."""
    measured, planned = gru_peak_bytes(hidden, dim, length, batch_size)
    tokens = 4.0 * batch_size * length
    return dict(hidden=hidden, dim=dim, length=length, batch_size=batch_size, measured_bytes=measured,
                planned_bytes=planned, measured_floats_per_token=measured / tokens,
                planned_floats_per_token=planned / tokens, ratio=measured / planned)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for cudnn_gru_peak.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("cudnn_gru_peak needs a CUDA device (cuDNN's GRU); none is visible")
    rows = [measure(*point) for point in itertools.product((32, 128), (16, 64), (50, 200), (64, 256, 1024))]
    print(f"{'h':>4} {'d':>3} {'L':>4} {'B':>5} {'measured fl/tok':>16} {'planned fl/tok':>15} {'ratio':>6}")
    for r in rows:
        print(f"{r['hidden']:>4} {r['dim']:>3} {r['length']:>4} {r['batch_size']:>5} "
              f"{r['measured_floats_per_token']:>16.1f} {r['planned_floats_per_token']:>15.1f} {r['ratio']:>6.2f}")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    write_json_atomic(Path(args.out) / "cudnn_gru_peak.json", result, sort_keys=True)
    return rows


if __name__ == "__main__":
    main()
