"""``recsys serve``: serve a ``recsys train`` run over HTTP.

::

    recsys serve --checkpoint RUN_DIR [--host 127.0.0.1 --port 8800] [--max-batch 32] [--max-batch-candidates 4096]
                 [--max-wait-ms 0] [--queue 256] [--deadline-ms 100] [--max-candidates 2000] [--token-file PATH]
                 [--uic-url http://127.0.0.1:8700 --uic-timeout-ms 50] [--threads 0] [--device cpu|cuda]
                 [--config configs/serve/hstu_ranking.yaml] [key=value ...]

``RUN_DIR`` is a run's ``output_dir`` (or its ``checkpoints/`` or a ``step_*`` folder). The server
binds 127.0.0.1 unless ``--host`` says otherwise; with ``--token-file`` every request but
``/health`` and ``/ready`` needs ``Authorization: Bearer <the file's content>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys.errors import ConfigError


def add_parser(sub) -> None:
    """Adds ``serve`` to the ``recsys`` parser's subparsers ``sub``."""
    serve = sub.add_parser("serve", help="serve a trained checkpoint over HTTP (POST /rank, /retrieve; GET /metrics)")
    serve.add_argument("--checkpoint", required=True, help="a `recsys train` output_dir (or checkpoints/ or step_* folder)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    serve.add_argument("--port", type=int, default=8800)
    serve.add_argument("--max-batch", type=int, default=32, help="most requests per model batch")
    serve.add_argument("--max-batch-candidates", type=int, default=4096, help="most candidates per model batch")
    serve.add_argument("--max-wait-ms", type=float, default=0.0,
                       help="how long a batch waits for more requests (0: batches what queued while the model ran)")
    serve.add_argument("--queue", type=int, default=256, help="most requests waiting; more get 503 at once")
    serve.add_argument("--deadline-ms", type=float, default=100.0, help="a request not answered by then gets 503")
    serve.add_argument("--max-candidates", type=int, default=2000, help="most candidates per /rank request")
    serve.add_argument("--admit-fraction", type=float, default=0.5,
                       help="accept a request while the expected wait is at most this share of its deadline")
    serve.add_argument("--token-file", default=None, help="file holding the bearer token requests must carry")
    serve.add_argument("--device", default="cpu",
                       help="where the model scores: cpu or cuda (cuda:N); features are built on the host")
    serve.add_argument("--uic-url", default=None,
                       help="mimn runs: read the users' states from this UIC (`recsys uic serve`), e.g. http://127.0.0.1:8700")
    serve.add_argument("--uic-timeout-ms", type=float, default=50.0,
                       help="the most one UIC lookup may take before the batch is scored from the empty state")
    serve.add_argument("--threads", type=int, default=0,
                       help="torch threads of the model (0 = all cores but one, which the HTTP event loop keeps)")
    serve.add_argument("--config", default=None, help="serve config YAML (e.g. configs/serve/hstu_ranking.yaml: KV cache)")
    serve.add_argument("overrides", nargs="*", help="key=value overrides of the serve config, e.g. kv_cache.num_pages=8192")


def options_from(args: argparse.Namespace):
    """The :class:`~recsys.serve.app.ServeOptions` of the command line."""
    from recsys.serve.app import ServeOptions

    token = None
    if args.token_file is not None:
        path = Path(args.token_file)
        if not path.is_file():
            raise ConfigError(f"--token-file {path} does not exist; write the token into it or leave the flag out")
        token = path.read_text(encoding="utf-8").strip()
    return ServeOptions(max_batch_requests=args.max_batch, max_batch_candidates=args.max_batch_candidates,
                        max_wait_ms=args.max_wait_ms, queue_size=args.queue, deadline_ms=args.deadline_ms,
                        max_candidates=args.max_candidates, token=token, admit_fraction=args.admit_fraction)


def model_threads(requested: int) -> int:
    """Torch threads of the model: ``requested``, or for 0 every core but one (at least one, at most
    torch's default): the event loop parsing and answering requests needs a core of its own, and
    two threads contending with it on two cores were 4x slower than one (docs/benchmarks.md)."""
    import os

    import torch

    if requested < 0:
        raise ConfigError(f"--threads must be >= 0 (0 = automatic), got {requested}")
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores - 1))


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from recsys.serve.app import create_app
    from recsys.serve.engine import Engine

    options = options_from(args)
    torch.set_num_threads(model_threads(args.threads))
    from recsys.config import load_config
    from recsys.serve.config import ServeConfig

    engine = Engine.load(args.checkpoint, load_config(ServeConfig, args.config, args.overrides), uic_url=args.uic_url,
                         uic_timeout_s=args.uic_timeout_ms / 1000, device=args.device)
    app = create_app(engine, options)
    print(f"serving {engine.name} ({engine.task}) from {args.checkpoint} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=15)
    return 0
