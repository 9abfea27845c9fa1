"""The model server over HTTP (FastAPI): rank, retrieve, health, readiness, metrics.

Endpoints::

    POST /rank      {"user_id", "candidates": [...], "request_time"?, "context"?: {"surface"}}
                    -> 200 {"model", "user_id", "request_time", "scores": {head: [p per candidate]}}
    POST /retrieve  {"user_id", "k", "request_time"?, "exclude_seen"?} -> 200 {"items": [...], "scores": [...]}
    GET  /health    200 while the process runs
    GET  /ready     200 once the model is loaded and warmed, 503 before and while draining
    GET  /metrics   Prometheus text (recsys/serve/metrics.py)

Errors: 400 body not JSON, 422 a field is wrong (the message names it), 404 unknown user,
401 missing or wrong bearer token (when the server has one; /health and /ready need none),
503 + ``Retry-After`` when the request cannot be served before its deadline (queue full, too much
work ahead for it, deadline passed, draining), 500 a failure inside the server (counted in
``recsys_serve_errors_total``).

``fastapi`` is imported when an app is created, never at ``import recsys``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request, imported lazily) as objects.

import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from recsys.serve.batcher import DynamicBatcher, Overloaded
from recsys.serve.features import UnknownUser
from recsys.serve.metrics import ServerMetrics
from recsys.serve.requests import RequestError, parse_json, parse_rank, parse_retrieve

logger = logging.getLogger(__name__)
OPEN_ROUTES = ("/health", "/ready")  # probes need no token


@dataclass
class ServeOptions:
    """Limits of the server (``recsys serve`` flags).

    Args:
        max_batch_requests: most requests per model batch (>= 1).
        max_batch_candidates: most candidates per model batch (>= 1; a larger request runs alone).
        max_wait_ms: how long a batch waits for more requests (>= 0). 0 (the default) batches what queued
            while the model ran and adds no wait; waiting pays only where a batch costs far less than
            linear in its size (small requests on a GPU).
        queue_size: most requests waiting for the model (>= 1); more get 503 at once.
        deadline_ms: a request not answered within this gets 503 + Retry-After (> 0).
        max_candidates: most candidates per /rank request (>= 1).
        max_k: most items per /retrieve request (>= 1).
        token: bearer token every request but /health and /ready must carry; None = no auth.
        retry_after_s: the Retry-After of a 503, in whole seconds (>= 1).
        admit_fraction: a request is accepted while the model's expected wait is at most this share of
            its deadline (0 < f <= 1); the rest of the deadline absorbs batches slower than the mean.
    """

    max_batch_requests: int = 32
    max_batch_candidates: int = 4096
    max_wait_ms: float = 0.0
    queue_size: int = 256
    deadline_ms: float = 100.0
    max_candidates: int = 2000
    max_k: int = 1000
    token: str | None = None
    retry_after_s: int = 1
    admit_fraction: float = 0.5

    def __post_init__(self) -> None:
        from recsys.errors import ConfigError

        for name in ("max_batch_requests", "max_batch_candidates", "queue_size", "max_candidates", "max_k",
                     "retry_after_s"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0 or self.deadline_ms <= 0:
            raise ConfigError(f"max_wait_ms must be >= 0 and deadline_ms > 0, got {self.max_wait_ms}, {self.deadline_ms}")
        if not 0 < self.admit_fraction <= 1:
            raise ConfigError(f"admit_fraction must lie in (0, 1], got {self.admit_fraction}")
        if self.token is not None and not self.token:
            raise ConfigError("the token is empty; put the token in --token-file or leave the flag out")


def create_app(engine, options: ServeOptions | None = None, warmup: bool = True):
    """The FastAPI app serving ``engine`` (:class:`recsys.serve.engine.Engine`).

    Args:
        engine: the loaded model; its ``run`` is called from the batcher's worker thread.
        options: limits, deadline and token.
        warmup: run one request through the model at startup before /ready says 200.
    """
    import orjson
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    options = options or ServeOptions()
    metrics = ServerMetrics(getattr(engine, "metrics", ()))
    batcher = DynamicBatcher(engine.run, metrics, options.max_batch_requests, options.max_batch_candidates,
                             options.max_wait_ms / 1000, options.queue_size, admit_fraction=options.admit_fraction)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        if warmup:
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, engine.warmup)
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.drain()  # graceful shutdown: answer what is queued

    app = FastAPI(title=f"recsys-zoo model server ({engine.name})", lifespan=lifespan)
    app.state.metrics, app.state.batcher = metrics, batcher

    def error(status: int, message: str, headers=None):
        return JSONResponse(status_code=status, content={"error": message}, headers=headers)

    def ok(body: dict):
        """200 with ``body`` encoded by orjson: the score arrays as float32 numbers, no per-element Python."""
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    app.add_middleware(_Observe, metrics=metrics, token=options.token, error=error)

    async def serve(request: Request, parse, route: str):
        deadline = time.monotonic() + options.deadline_ms / 1000
        try:
            parsed = parse(parse_json(await request.body()))
            engine.check(parsed)
            return parsed, await batcher.submit(parsed, engine.size(parsed), deadline)
        except RequestError as e:
            return None, error(e.status, str(e))
        except UnknownUser as e:
            return None, error(404, str(e))
        except Overloaded as e:
            metrics.shed.inc(route, e.reason)
            return None, error(503, str(e), {"Retry-After": str(options.retry_after_s)})
        except Exception as e:  # a request's own failure inside the model (e.g. a DataError)
            from recsys.errors import RecsysError

            if isinstance(e, RecsysError):
                return None, error(422, str(e))
            raise

    def wrong_task(route: str):
        return error(404, f"{route} is not served by {engine.name} (a {engine.task} model); use "
                          f"{'/retrieve' if engine.task == 'retrieval' else '/rank'}")

    @app.post("/rank")
    async def rank(request: Request):
        if engine.task != "ranking":
            return wrong_task("/rank")
        parsed, result = await serve(request, lambda p: parse_rank(p, engine.store.spec, options.max_candidates), "/rank")
        if parsed is None:
            return result
        return ok({"model": engine.name, "user_id": parsed.user, "request_time": parsed.time, "scores": result})

    @app.post("/retrieve")
    async def retrieve(request: Request):
        if engine.task != "retrieval":
            return wrong_task("/retrieve")
        parsed, result = await serve(request, lambda p: parse_retrieve(p, engine.store.spec, options.max_k), "/retrieve")
        if parsed is None:
            return result
        items, scores = result
        return ok({"model": engine.name, "user_id": parsed.user, "request_time": parsed.time, "items": items,
                   "scores": scores})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "task": engine.task}

    @app.get("/ready")
    async def ready():
        if not state["ready"]:
            return error(503, "not ready: the model is loading or warming up, or the server is draining",
                         {"Retry-After": str(options.retry_after_s)})
        return {"status": "ready", "model": engine.name, "task": engine.task}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class _Observe:
    """ASGI middleware: the bearer token, then latency and status counts of every HTTP request.

    A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which runs each request
    through an extra task and a response stream): it only watches the ``http.response.start``
    message for the status.
    """

    def __init__(self, app, metrics: ServerMetrics, token: str | None, error):
        self.app, self.metrics, self.token, self.error = app, metrics, token, error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, route, status = time.monotonic(), scope["path"], {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if self.token is not None and route not in OPEN_ROUTES and not _authorised(scope, self.token):
            await self.error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": "Bearer"})(scope, receive, watch)
        else:
            try:
                await self.app(scope, receive, watch)
            except Exception:
                logger.exception("request to %s failed", route)
                self.metrics.errors.inc(route)
                if "code" in status:  # the response had started: nothing more can be sent
                    raise
                await self.error(500, "internal error (see the server log)")(scope, receive, watch)
        if route in ("/rank", "/retrieve"):
            self.metrics.latency.observe(time.monotonic() - start, route)
        self.metrics.requests.inc(route, str(status.get("code", 500)))


def _authorised(scope, token: str) -> bool:
    header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
