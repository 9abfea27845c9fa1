"""Replays measured ``plan_vs_measured.json`` rows through the current estimate, on any machine.

For every row of the given files (a GPU run of ``benchmarks/plan_vs_measured.py``) the plan is
recomputed here, on CPU, for the same model, batch size, lengths and device (a cuda topology with
the run's peak and efficiency; the synthetic data of the GPU run), and printed beside the measured
peak and step with the bars (memory within 20%, step within 2x). The measured numbers are the
file's; only the planned ones are new. Not a test: a check of the estimate against real runs.

The plan's host constants are scaled to the measured host by the file's ``raw_launch_us`` (the
bare aten op time ``benchmarks/calibrate_device.py`` measured on that machine; absent: the reference
host of the defaults), and its memory bandwidth is the file's ``hbm_bw_gbps`` (absent: 4,800 GB/s).

A file's optional ``model_overrides`` (``{model: {field: value}}``) plans a model as that run
trained it where the code has changed since, e.g. ``{"hstu": {"attention_kernel": "pytorch"}}``
for a run made before the fused HSTU attention kernel had a backward.

    python benchmarks/replay_plan_vs_measured.py runs/bench/plan-vs-measured/plan_vs_measured.json --out runs/replay
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import plan_vs_measured as pvm

from recsys.atomic_files import write_json_atomic

H200_HBM_GB = 139.8


def replay(paths, out: str, hbm_gb: float = H200_HBM_GB, raw_launch_us: float | None = None) -> list[dict]:
    rows = []
    for path in paths:
        result = json.load(open(path))
        args = SimpleNamespace(tiny=False, max_len=None, out=out, matmul_precision="highest",
                               peak_tflops=result["peak_tflops"], efficiency=result["efficiency"],
                               hbm_bw_gbps=result.get("hbm_bw_gbps", 4800.0),
                               raw_launch_us=result.get("raw_launch_us") if raw_launch_us is None else raw_launch_us)
        for measured in result["rows"]:
            args.max_len = measured["max_len"]
            overrides = result.get("model_overrides", {}).get(measured["model"])
            report, data, _ = pvm.plan_case(measured["model"], measured["batch_size"], args, "cuda", hbm_gb, overrides)
            r = pvm.row(measured["model"], report, data, args.max_len, measured["measured_peak_gb"],
                        measured["measured_step_ms"])
            r["old_planned_gb"], r["old_planned_step_ms"] = measured["planned_gb"], measured["planned_step_ms"]
            rows.append(r)
            pvm._print_row(r)
    print(pvm.summary(rows), flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="plan_vs_measured.json files of a GPU run")
    parser.add_argument("--out", required=True, help="folder for replay.json (and the lifelong data cache)")
    parser.add_argument("--raw-launch-us", type=float, default=None,
                        help="the measured host's bare aten op time (default: the file's raw_launch_us, else the "
                             "reference host's)")
    args = parser.parse_args(argv)
    rows = replay(args.json, args.out, raw_launch_us=args.raw_launch_us)
    write_json_atomic(f"{args.out}/replay.json", {"rows": rows}, sort_keys=True)
    print(f"wrote {args.out}/replay.json and {pvm.plot(rows, Path(args.out) / 'replay.png')}")
    return rows


if __name__ == "__main__":
    main()
