"""``recsys uic ...``: serve the User Interest Center, warm it up from logs, snapshot and roll back.

::

    recsys uic serve    --checkpoint RUN [--config YAML] [--store STORE] [--host 127.0.0.1 --port 8700] [--daily-snapshots KEEP]
                        [--source redis://HOST:PORT/DB?stream=uic:events&group=uic&consumer=uic-0 [--no-http-ingest]]
    recsys uic warmup   --checkpoint RUN [--config YAML] --events config|PATH [--source log] [--store ...] [--users-per-batch N]
    recsys uic snapshot [--store ...] [--keep 7]
    recsys uic rollback --to NAME [--store ...]
    recsys uic snapshots [--store ...]

``RUN`` is what ``recsys train`` wrote (``recsys.load``); ``--config`` must describe the same model.

``STORE`` is ``sqlite:PATH`` (the embedded default, ``sqlite:runs/uic/states.sqlite``) or
``redis://HOST:PORT/DB[?namespace=uic]`` (also ``rediss://``, ``unix://``): every command (serve,
warmup, snapshot, rollback, snapshots) works on either.

``--source redis://HOST:PORT/DB?stream=S&group=G&consumer=C&batch=N&min_idle_ms=M`` makes ``serve``
consume events from a Redis stream with a consumer group (``recsys/uic/stream_ingest.py``) besides
``POST /events`` (``--no-http-ingest``: instead of it). Defaults: ``stream=uic:events``, ``group=uic``,
``consumer=uic-0`` (a restarted service with the same name resumes its own pending entries),
``batch=500``, ``min_idle_ms=30000``. SIGTERM / SIGINT stop the service after the batch in progress
is committed and acknowledged. ``/stats`` shows the stream's counters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recsys.errors import ConfigError

DEFAULT_STORE = "sqlite:runs/uic/states.sqlite"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SOURCE_OPTIONS = {"stream": "uic:events", "group": "uic", "consumer": "uic-0", "batch": 500, "min_idle_ms": 30_000}


def add_parser(sub) -> None:
    """Adds ``uic`` and its subcommands to the ``recsys`` parser's subparsers ``sub``."""
    uic = sub.add_parser("uic", help="the MIMN User Interest Center: serve, warm up, snapshot, roll back")
    uic_sub = uic.add_subparsers(dest="uic_command", required=True)

    def store_arg(p):
        p.add_argument("--store", default=DEFAULT_STORE,
                       help=f"where the states live: sqlite:PATH or redis://HOST:PORT/DB[?namespace=NS] (default {DEFAULT_STORE})")

    def model_args(p):
        p.add_argument("--checkpoint", required=True, help="a `recsys train` output_dir (or checkpoints/ or step_* folder) of a mimn model")
        p.add_argument("--config", default=None, help="the run's YAML; checked against the checkpoint's model section")
        store_arg(p)

    serve = uic_sub.add_parser("serve", help="serve the UIC over HTTP (FastAPI + uvicorn)")
    model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    serve.add_argument("--port", type=int, default=8700)
    serve.add_argument("--daily-snapshots", type=int, default=0, metavar="KEEP",
                       help="take the UTC day's snapshot once a day, keeping KEEP (0 = off)")
    serve.add_argument("--source", default=None, metavar="REDIS_URL",
                       help="also consume events from a Redis stream: redis://HOST:PORT/DB?stream=uic:events&group=uic"
                            "&consumer=uic-0&batch=500&min_idle_ms=30000")
    serve.add_argument("--no-http-ingest", action="store_true", help="with --source: no POST /events (the stream only)")
    warmup = uic_sub.add_parser("warmup", help="build the states from an event log in bulk")
    model_args(warmup)
    warmup.add_argument("--events", required=True,
                        help="'config' (the data source of --config, or of the run: e.g. the synthetic world) or a path")
    warmup.add_argument("--source", default="log", help="reader of --events PATH (log = `recsys data convert` output)")
    warmup.add_argument("--users-per-batch", type=int, default=2048, help="whole users per center batch")
    snapshot = uic_sub.add_parser("snapshot", help="snapshot the store under the UTC date; keep the newest daily ones")
    store_arg(snapshot)
    snapshot.add_argument("--keep", type=int, default=7, help="daily snapshots kept (default 7)")
    rollback = uic_sub.add_parser("rollback", help="replace the states by a snapshot's")
    store_arg(rollback)
    rollback.add_argument("--to", required=True, dest="name", help="snapshot name (`recsys uic snapshots` lists them)")
    listing = uic_sub.add_parser("snapshots", help="list the snapshots, oldest first")
    store_arg(listing)


def run(args: argparse.Namespace) -> int:
    return {"serve": _serve, "warmup": _warmup, "snapshot": _snapshot, "rollback": _rollback,
            "snapshots": _list}[args.uic_command](args)


# ---------------------------------------------------------------------------------------------- pieces
def _open_sqlite(where: str):
    from recsys.uic.sqlite_store import SQLiteStateStore

    return SQLiteStateStore(where)


def _open_redis(url: str):
    from recsys.uic.redis_connection import split_options
    from recsys.uic.redis_store import RedisStateStore

    url, options = split_options(url, {"namespace": "uic"}, "--store")
    return RedisStateStore(url, options["namespace"])


STORES = {"sqlite": _open_sqlite}  # scheme -> opener of "scheme:WHERE"


def open_store(spec: str):
    """A store from ``sqlite:PATH`` or ``redis://HOST:PORT/DB[?namespace=NS]``."""
    if spec.startswith(REDIS_SCHEMES):
        return _open_redis(spec)
    scheme, _, where = spec.partition(":")
    if scheme not in STORES or not where:
        raise ConfigError(f"--store {spec!r} is not sqlite:PATH or redis://HOST:PORT/DB[?namespace=NS]; "
                          f"e.g. --store {DEFAULT_STORE}")
    return STORES[scheme](where)


def open_source(center, url: str):
    """A :class:`~recsys.uic.stream_ingest.StreamIngest` of ``center`` from ``--source URL`` (not started)."""
    from recsys.uic.redis_connection import redact, split_options
    from recsys.uic.redis_stream import RedisEventStream
    from recsys.uic.stream_ingest import StreamIngest

    if not url.startswith(REDIS_SCHEMES):
        raise ConfigError(f"--source {redact(url)!r} must be a Redis URL: redis://HOST:PORT/DB?stream=uic:events&group=uic")
    url, options = split_options(url, SOURCE_OPTIONS, "--source")
    if options["batch"] < 1 or options["min_idle_ms"] < 0:
        raise ConfigError(f"--source: batch must be >= 1 and min_idle_ms >= 0, got {options}")
    stream = RedisEventStream(url, options["stream"], options["group"], options["consumer"], options["min_idle_ms"])
    return StreamIngest(center, stream, batch_size=options["batch"])


def load_model(checkpoint: str, config: str | None):
    """The MIMN ranker of a run (``recsys.load``) and the run's config; ``config`` must agree with it."""
    from recsys.config import load_config
    from recsys.inference import _locate, _run_config, load
    from recsys.models.mimn import MIMNRanker
    from recsys.train.config import TrainConfig

    run_cfg = _run_config(_locate(Path(checkpoint), None)[0])
    if config is not None:
        cfg = load_config(TrainConfig, config)
        if cfg.model != run_cfg.model:
            raise ConfigError(f"--config {config} describes model {cfg.model}, the checkpoint {checkpoint} holds "
                              f"{run_cfg.model}; pass the run's own config (or leave --config out)")
    else:
        cfg = run_cfg
    model = load(checkpoint)
    if not isinstance(model, MIMNRanker):
        raise ConfigError(f"the UIC serves mimn models; {checkpoint} holds {run_cfg.model_name!r}")
    return model, cfg


def build_center(args, history=None):
    from recsys.uic.center import UserInterestCenter, model_version_of

    model, cfg = load_model(args.checkpoint, args.config)
    return UserInterestCenter(model, open_store(args.store), model_version_of(model), history=history), cfg


# ---------------------------------------------------------------------------------------------- commands
def _serve(args) -> int:
    import uvicorn

    from recsys.uic.http_service import create_app

    if args.no_http_ingest and args.source is None:
        raise ConfigError("--no-http-ingest needs --source (otherwise nothing would feed the center)")
    center, _ = build_center(args)
    ingest = open_source(center, args.source) if args.source else None
    app = create_app(center, daily_snapshot_keep=args.daily_snapshots, stream_ingest=ingest,
                     http_ingest=not args.no_http_ingest)
    fed = f", events from {ingest.stream.address} stream {ingest.stream.stream!r}" if ingest else ""
    print(f"UIC: model {center.model_version}, store {center.store!r}{fed}, on http://{args.host}:{args.port}", flush=True)
    _exit_quietly_after_signals()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")  # SIGTERM/SIGINT: graceful shutdown
    finally:
        if ingest is not None:
            ingest.stop()
            ingest.stream.close()
        center.store.close()
    return 0


def _exit_quietly_after_signals() -> None:
    """SIGTERM/SIGINT handlers for after uvicorn: it handles them while it serves (graceful shutdown,
    the stream's batch in progress committed and acknowledged), then restores these and re-raises the
    signal; these let ``serve`` close its store and exit 0 instead of dying of the signal."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)


def _warmup(args) -> int:
    from recsys.uic.center import ApplyResult
    from recsys.uic.event_log import EventLogHistory, event_batches

    if args.users_per_batch < 1:
        raise ConfigError(f"--users-per-batch must be >= 1, got {args.users_per_batch}")
    center, cfg = build_center(args)
    log = _read_events(args, cfg)
    center.history = EventLogHistory(log)  # states of another model version are rebuilt from the log
    totals, start = ApplyResult(), time.perf_counter()
    for batch in event_batches(log, args.users_per_batch):
        totals = totals + center.apply(batch)
    seconds = time.perf_counter() - start
    center.store.close()
    print(f"warmed {log.num_users} users from {len(log)} events in {seconds:.1f} s "
          f"({len(log) / max(seconds, 1e-9):,.0f} events/s): {totals}")
    return 0


def _read_events(args, cfg):
    if args.events == "config":
        from recsys.data.pipeline import load_events

        return load_events(cfg.data)
    if args.source == "log":
        from recsys.data.log_io import read_log

        return read_log(args.events)
    from recsys.data.readers import read_events

    return read_events(args.source, args.events)


def _snapshot(args) -> int:
    from recsys.uic.snapshots import take_daily_snapshot

    with open_store(args.store) as store:
        name, dropped = take_daily_snapshot(store, keep=args.keep)
        print(f"snapshot {name} of {args.store}" + (f"; dropped {', '.join(dropped)}" if dropped else ""))
    return 0


def _rollback(args) -> int:
    from recsys.uic.snapshots import rollback

    with open_store(args.store) as store:
        rollback(store, args.name)
    print(f"{args.store} rolled back to {args.name}")
    return 0


def _list(args) -> int:
    with open_store(args.store) as store:
        for name in store.snapshots():
            print(name)
    return 0
