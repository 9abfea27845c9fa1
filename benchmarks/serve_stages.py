"""Where one ``/rank`` request's time goes inside ``recsys serve``, stage by stage, in process.

::

    OMP_NUM_THREADS=1 python benchmarks/serve_stages.py --checkpoint runs/serve-bench-dlrm --candidates 500 \\
        --out runs/bench/serve-stages.json

Times each stage of the request path on ``--requests`` fixed requests (a random user of the run and
``--candidates`` random items each), median over ``--repeats`` passes: the JSON body to a dict, its
validation (``parse_rank``), the features (``FeatureStore.ranking_batch``: history cut, collate, KJT),
the batch's move to ``--device`` (``to device``: the difference of two medians, ~0 on the CPU), the
model (``forward`` and, where the model has it, ``forward_requests``; the EmbeddingBagCollection
lookups alone for DLRM; device work waited for), and the response body (FastAPI's ``jsonable_encoder`` + ``json.dumps`` of
lists, against ``orjson`` of the float32 arrays). Writes the JSON and a PNG beside it (ms per stage;
``lookups`` is part of ``forward``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.plots import grouped_bars, png_beside  # noqa: E402  (after the path: runs from a checkout)


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a `recsys train` run of a ranking model")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--requests", type=int, default=50, help="distinct requests cycled through")
    p.add_argument("--repeats", type=int, default=200, help="timed passes per stage")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the server's default on 2 cores: 1)")
    p.add_argument("--device", default="cpu", help="where the model scores (recsys serve --device)")
    p.add_argument("--machine", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/serve-stages.json")
    return p.parse_args(argv)


def median_ms(fn, count: int, repeats: int, sync=lambda: None) -> float:
    """Median ms of ``fn(i)`` over ``repeats`` calls; ``sync`` waits for the device's queued work."""
    times = []
    for i in range(repeats):
        sync()
        start = time.perf_counter()
        fn(i % count)
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def measure(args) -> dict:
    import orjson
    import torch
    from fastapi.encoders import jsonable_encoder

    from recsys.serve.engine import Engine
    from recsys.serve.requests import parse_rank

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.checkpoint, device=args.device)
    device = next(engine.model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model, spec, store = engine.model, engine.store.spec, engine.store
    rng = np.random.default_rng(args.seed)
    n = min(args.candidates, spec.num_items)
    bodies = [json.dumps({"user_id": int(rng.integers(spec.num_users)),
                          "candidates": rng.choice(spec.num_items, n, replace=False).tolist()}).encode()
              for _ in range(args.requests)]
    count, repeats, stages = len(bodies), args.repeats, {}
    stages["parse"] = median_ms(lambda i: json.loads(bodies[i]), count, repeats)
    payloads = [json.loads(b) for b in bodies]
    stages["validate"] = median_ms(lambda i: parse_rank(payloads[i], spec, 1 << 20), count, repeats)
    requests = [parse_rank(p, spec, 1 << 20) for p in payloads]
    with torch.inference_mode():
        engine.warmup()
        stages["features"] = median_ms(lambda i: store.ranking_batch([requests[i]]), count, repeats)
        stages["to device"] = median_ms(lambda i: store.ranking_batch([requests[i]]).to(device), count, repeats,
                                        sync) - stages["features"]
        batches = [store.ranking_batch([r]).to(device) for r in requests]
        stages["forward"] = median_ms(lambda i: model(batches[i]), count, repeats, sync)
        if hasattr(model, "sparse_arch"):
            stages["lookups"] = median_ms(lambda i: model.sparse_arch(batches[i].sparse_features), count, repeats, sync)
        if hasattr(model, "forward_requests"):
            offsets = torch.tensor([0, n], device=device)
            stages["forward_requests"] = median_ms(lambda i: model.forward_requests(batches[i], offsets), count,
                                                   repeats, sync)
        scores = [engine.run([r])[0] for r in requests]
    lists = [{head: values.tolist() for head, values in s.items()} for s in scores]
    stages["jsonable_encoder"] = median_ms(
        lambda i: json.dumps(jsonable_encoder({"model": engine.name, "scores": lists[i]})).encode(), count, repeats)
    stages["orjson"] = median_ms(
        lambda i: orjson.dumps({"model": engine.name, "scores": scores[i]}, option=orjson.OPT_SERIALIZE_NUMPY),
        count, repeats)
    return {"model": engine.name, "candidates": n, "threads": args.threads, "device": str(device),
            "machine": args.machine,
            "stages_ms": stages}


def plot(result: dict, path):
    """One bar per stage (ms)."""
    groups = {name: {"median ms": (ms, float("nan"))} for name, ms in result["stages_ms"].items()}
    title = ", ".join(filter(None, [f"{result['model']} /rank stages", f"{result['candidates']} candidates",
                                    result.get("machine")]))
    return grouped_bars(groups, path, "ms per request (median)", title=title)


def main(argv=None) -> None:
    args = _parse(argv)
    result = measure(args)
    from recsys.atomic_files import write_json_atomic

    write_json_atomic(args.out, result)
    plot(result, png_beside(args.out))
    for name, ms in result["stages_ms"].items():
        print(f"| {name} | {ms:.2f} |")
    print(f"wrote {args.out} and its PNG")


if __name__ == "__main__":
    main()
