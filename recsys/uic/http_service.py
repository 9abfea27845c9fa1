"""The UIC over HTTP (FastAPI): ingest event batches, serve states to the ranker.

Endpoints::

    POST /events   {"events": [{"user_id", "item_id", "timestamp", "event_id", "actions"}, ...]}
                   -> 200 {"applied", "duplicates", "late", "skipped", "rebuilt", "replayed"}
                      only after the batch is committed (the producer retries until a 200: at-least-once,
                      and the center's idempotence makes the retries harmless);
                   -> 400 body not JSON, 422 a field is wrong (named: "events[3].item_id ..."); nothing applied
                   (absent when the app ingests from a stream only: ``http_ingest=False``)
    GET  /state/{user_id}   the record's metadata and its state as JSON lists per field (404 unknown user)
    POST /states   {"user_ids": [...], "encoding": "base64" | "lists"} -> the states for ranking
                   (init_state for users without a record: "found": false)
    GET  /health   {"status": "ok", "model_version", "store"}
    GET  /stats    the store's counters, the users with a record, and the stream's counters when
                   a :class:`~recsys.uic.stream_ingest.StreamIngest` feeds the center

``fastapi`` is imported when an app is created, never at ``import recsys``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request, imported lazily) as objects.

import base64
import dataclasses
import datetime as dt
import json
import logging
import threading
from contextlib import asynccontextmanager
from typing import Any

from recsys.errors import DataError
from recsys.uic.center import UserInterestCenter
from recsys.uic.events import BehaviorEvent

MAX_EVENTS = 100_000  # events per request
MAX_USERS = 10_000  # users per /states request
logger = logging.getLogger(__name__)


def parse_events(payload: Any, max_events: int = MAX_EVENTS) -> list[BehaviorEvent]:
    """``{"events": [...]}`` -> BehaviorEvents; DataError naming the field otherwise."""
    if not isinstance(payload, dict) or "events" not in payload:
        raise DataError('the body must be a JSON object {"events": [...]}')
    extra = sorted(set(payload) - {"events"})
    if extra:
        raise DataError(f'the body has unknown fields {extra}; send {{"events": [...]}}')
    events = payload["events"]
    if not isinstance(events, list):
        raise DataError(f"events must be a list of event objects, got {type(events).__name__}")
    if len(events) > max_events:
        raise DataError(f"events holds {len(events)} events, at most {max_events} per request; split the batch")
    return [BehaviorEvent.from_json(event, index=i) for i, event in enumerate(events)]


def parse_user_ids(payload: Any) -> tuple[list[int], str]:
    """``{"user_ids": [...], "encoding": ...}`` -> (ids, encoding); DataError naming the field otherwise."""
    if not isinstance(payload, dict) or not isinstance(payload.get("user_ids"), list):
        raise DataError('the body must be a JSON object {"user_ids": [...], "encoding": "base64" | "lists"}')
    ids = payload["user_ids"]
    if len(ids) > MAX_USERS:
        raise DataError(f"user_ids holds {len(ids)} ids, at most {MAX_USERS} per request; split the lookup")
    for i, user in enumerate(ids):
        if isinstance(user, bool) or not isinstance(user, int) or user < 0:
            raise DataError(f"user_ids[{i}] must be an integer >= 0, got {user!r}")
    encoding = payload.get("encoding", "base64")
    if encoding not in ("base64", "lists"):
        raise DataError(f'encoding must be "base64" or "lists", got {encoding!r}')
    return ids, encoding


def create_app(center: UserInterestCenter, daily_snapshot_keep: int = 0, stream_ingest=None,
               http_ingest: bool = True):
    """The FastAPI app of ``center``.

    Args:
        center: the center the endpoints apply to and read from.
        daily_snapshot_keep: when > 0, a background thread takes the UTC day's snapshot
            (:func:`recsys.uic.snapshots.take_daily_snapshot`) once a day, keeping this many.
        stream_ingest: a :class:`recsys.uic.stream_ingest.StreamIngest`, started with the app and
            stopped (its batch in progress committed and acknowledged) when the app shuts down.
        http_ingest: serve ``POST /events`` (False: events come from ``stream_ingest`` only).
    """
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(app):
        stop = threading.Event()
        thread = None
        if daily_snapshot_keep > 0:
            thread = threading.Thread(target=_daily_snapshots, args=(center, daily_snapshot_keep, stop), daemon=True)
            thread.start()
        if stream_ingest is not None:
            stream_ingest.start()
        yield
        if stream_ingest is not None:
            await run_in_threadpool(stream_ingest.stop)
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    app = FastAPI(title="recsys-zoo User Interest Center (MIMN)", lifespan=lifespan)
    codec = center.codec

    @app.exception_handler(DataError)
    async def data_error(request, error: DataError):
        return JSONResponse(status_code=422, content={"error": str(error)})

    async def json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as error:
            raise _BadJSON(f"the body is not JSON: {error}") from None

    @app.exception_handler(_BadJSON)
    async def bad_json(request, error: _BadJSON):
        return JSONResponse(status_code=400, content={"error": str(error)})

    async def post_events(request: Request):
        events = parse_events(await json_body(request))
        result = await run_in_threadpool(center.apply, events)  # returns after the store's commit
        return dataclasses.asdict(result)

    if http_ingest:
        app.post("/events")(post_events)

    @app.get("/state/{user_id}")
    async def get_state(user_id: int):
        records = await run_in_threadpool(center.store.read, [user_id])
        record = records.get(user_id)
        if record is None:
            return JSONResponse(status_code=404, content={"error": f"no record of user {user_id}"})
        body = _metadata(record, center.model_version)
        body["state"] = codec.as_lists(record.state) if record.model_version == center.model_version else None
        return body

    @app.post("/states")
    async def post_states(request: Request):
        user_ids, encoding = parse_user_ids(await json_body(request))
        state, records = await run_in_threadpool(center.states_and_records, user_ids)
        blobs = codec.encode(state)
        rows = []
        for user, blob in zip(user_ids, blobs):
            record = records.get(user)
            row = {"user_id": user, "found": record is not None,
                   "events_applied": record.events_applied if record else 0,
                   "last_key": list(record.last_key) if record else None}
            row["state"] = base64.b64encode(blob).decode() if encoding == "base64" else codec.as_lists(blob)
            rows.append(row)
        return {"model_version": center.model_version, "layout": codec.describe(), "states": rows}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model_version": center.model_version, "store": repr(center.store)}

    def current_stats() -> dict:
        body = {"model_version": center.model_version, "counters": center.store.counters(), "users": center.store.count()}
        if stream_ingest is not None:
            body["stream"] = stream_ingest.stats()
        return body

    @app.get("/stats")
    async def stats():
        return await run_in_threadpool(current_stats)

    return app


class _BadJSON(Exception):
    pass


def _metadata(record, model_version: str) -> dict:
    return {
        "user_id": record.user_id, "last_key": list(record.last_key), "events_applied": record.events_applied,
        "model_version": record.model_version, "current_model": record.model_version == model_version,
    }


def _daily_snapshots(center: UserInterestCenter, keep: int, stop: threading.Event, every_s: float = 600.0) -> None:
    """Takes the UTC day's snapshot when it is missing; checks every ``every_s`` seconds until ``stop``."""
    from recsys.uic.snapshots import snapshot_name, take_daily_snapshot

    while not stop.is_set():
        try:
            if snapshot_name(dt.datetime.now(dt.timezone.utc)) not in center.store.snapshots():
                name, dropped = take_daily_snapshot(center.store, keep=keep)  # one transaction: batches are whole
                logger.info("UIC snapshot %s taken; dropped %s", name, dropped)
        except Exception:  # a failed snapshot must not stop the service; it is retried
            logger.exception("UIC daily snapshot failed")
        stop.wait(every_s)
