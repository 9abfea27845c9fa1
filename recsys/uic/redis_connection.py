"""One way to reach Redis for the UIC: connect, check the server, and turn network errors into clear ones.

:class:`recsys.uic.redis_store.RedisStateStore` and :class:`recsys.uic.redis_stream.RedisEventStream`
both take a ``redis://`` URL or a ready ``redis.Redis`` client. A server that cannot be reached, or one
older than 7.0 (``COPY``, ``XAUTOCLAIM`` with deleted ids, Lua scripts with flags), is a
:class:`RedisUnavailable` naming the URL (password hidden) and the fix, not a socket trace.

The ``redis`` client library is imported on first use, so ``import recsys.uic`` needs no server library.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from recsys.errors import RecsysError

MIN_SERVER_VERSION = (7, 0)


class RedisUnavailable(RecsysError):
    """Redis cannot be reached or cannot serve the UIC (too old, refused a command)."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def describe(client: Any) -> str:
    """A printable address of ``client``'s server: ``redis://host:port/db`` or ``unix://path``."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def connect(url_or_client: Any) -> tuple[Any, str, bool]:
    """A client for ``url_or_client``, checked with a ``PING`` and the server version.

    Returns:
        ``(client, address, owned)``: ``address`` is printable (no password); ``owned`` is True when
        the client was made here from a URL (its owner closes it).
    """
    if isinstance(url_or_client, str):
        redis = _import_redis()
        if not url_or_client.startswith(("redis://", "rediss://", "unix://")):
            raise RedisUnavailable(
                f"Redis URL {redact(url_or_client)!r} must start with redis://, rediss:// or unix:// "
                "(e.g. redis://127.0.0.1:6379/0)"
            )
        client, address, owned = redis.Redis.from_url(url_or_client), redact(url_or_client), True
    else:
        client, address, owned = url_or_client, describe(url_or_client), False
    with translate_errors(address):
        client.ping()
        version = str(client.info("server")["redis_version"])
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_SERVER_VERSION:
        raise RedisUnavailable(
            f"Redis at {address} is version {version}; the UIC needs Redis >= "
            f"{'.'.join(map(str, MIN_SERVER_VERSION))} (COPY, XAUTOCLAIM, Lua scripts with flags). Upgrade the server."
        )
    return client, address, owned


@contextlib.contextmanager
def translate_errors(address: str) -> Iterator[None]:
    """Re-raise the client's connection and timeout errors as :class:`RedisUnavailable` naming ``address``."""
    redis = _import_redis()
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        raise RedisUnavailable(
            f"cannot reach Redis at {address} ({error}). Start a server there (e.g. `redis-server --port "
            f"<port> --appendonly yes`) or pass the URL of a running one."
        ) from error


def _import_redis():
    try:
        import redis
    except ImportError as error:  # pragma: no cover - the test requirements install it
        raise RedisUnavailable(
            "the Python package `redis` is not installed; install it with `pip install redis` "
            "(it is in requirements/test.txt and the `redis` extra)"
        ) from error
    return redis
