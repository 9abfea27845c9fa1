"""In-process servers for the model server's tests: an app with its lifespan, and an async client."""

import contextlib

import httpx

from recsys.serve.app import ServeOptions, create_app
from recsys.serve.engine import Engine

_ENGINES: dict = {}


def engine_of(run) -> Engine:
    """The run's engine, loaded once per test session."""
    if str(run) not in _ENGINES:
        _ENGINES[str(run)] = Engine.load(run)
    return _ENGINES[str(run)]


@contextlib.asynccontextmanager
async def serving(engine, **options):
    """An async httpx client of a started app (lifespan run: warm-up, batcher, draining on exit)."""
    app = create_app(engine, ServeOptions(**options))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            yield client
