"""``recsys uic ...``: serve the User Interest Center, warm it up from logs, snapshot and roll back.

::

    recsys uic serve    --checkpoint RUN [--config YAML] [--store sqlite:PATH] [--host 127.0.0.1 --port 8700] [--daily-snapshots]
    recsys uic warmup   --checkpoint RUN [--config YAML] --events config|PATH [--source log] [--store ...] [--users-per-batch N]
    recsys uic snapshot [--store ...] [--keep 7]
    recsys uic rollback --to NAME [--store ...]
    recsys uic snapshots [--store ...]

``RUN`` is what ``recsys train`` wrote (``recsys.load``); ``--config`` must describe the same model.
The store defaults to ``sqlite:runs/uic/states.sqlite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recsys.errors import ConfigError

DEFAULT_STORE = "sqlite:runs/uic/states.sqlite"


def add_parser(sub) -> None:
    """Adds ``uic`` and its subcommands to the ``recsys`` parser's subparsers ``sub``."""
    uic = sub.add_parser("uic", help="the MIMN User Interest Center: serve, warm up, snapshot, roll back")
    uic_sub = uic.add_subparsers(dest="uic_command", required=True)

    def store_arg(p):
        p.add_argument("--store", default=DEFAULT_STORE, help=f"where the states live (default {DEFAULT_STORE})")

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


STORES = {"sqlite": _open_sqlite}  # scheme -> opener of "scheme:WHERE"


def open_store(spec: str):
    """A store from ``scheme:WHERE`` (``sqlite:runs/uic/states.sqlite``)."""
    scheme, _, where = spec.partition(":")
    if scheme not in STORES or not where:
        raise ConfigError(f"--store {spec!r} is not SCHEME:WHERE with SCHEME one of {sorted(STORES)}; "
                          f"e.g. --store {DEFAULT_STORE}")
    return STORES[scheme](where)


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

    center, _ = build_center(args)
    app = create_app(center, daily_snapshot_keep=args.daily_snapshots)
    print(f"UIC: model {center.model_version}, store {center.store!r}, on http://{args.host}:{args.port}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        center.store.close()
    return 0


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
