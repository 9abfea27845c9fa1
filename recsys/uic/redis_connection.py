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
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from recsys.errors import ConfigError, RecsysError

MIN_SERVER_VERSION = (7, 0)
CONNECT_TIMEOUT_S = 5.0


class RedisUnavailable(RecsysError):
    """Redis cannot be reached or cannot serve the UIC (too old, refused a command)."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def split_options(url: str, options: dict[str, Any], flag: str) -> tuple[str, dict[str, Any]]:
    """``(url without the UIC's query options, their values)`` of ``redis://HOST:PORT/DB?name=value&...``.

    Args:
        url: the URL given on the command line (its other query parameters are the client's).
        options: the UIC's option names and their defaults; a value is converted to its default's type.
        flag: the command-line flag, named in errors (``--store``).

    Example::

        split_options("redis://h:6379/0?namespace=uic.p1", {"namespace": "uic"}, "--store")
        # ("redis://h:6379/0", {"namespace": "uic.p1"})
    """
    parts = urlsplit(url)
    values, rest = dict(options), []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in options:
            rest.append((name, value))
            continue
        try:
            values[name] = type(options[name])(value)
        except ValueError:
            raise ConfigError(f"{flag} {redact(url)}: {name}={value!r} must be a {type(options[name]).__name__}") from None
    return urlunsplit(parts._replace(query=urlencode(rest))), values


def describe(client: Any) -> str:
    """A printable address of ``client``'s server: ``redis://host:port/db`` or ``unix://path``."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def connect(url_or_client: Any) -> tuple[Any, str, bool]:
    """A client for ``url_or_client``, checked with a ``PING`` and the server version.

    A client made here from a URL never re-sends a command after a connection error: a commit whose reply was lost has run once, and sending it again would add
    its counters twice; a lost ``XREADGROUP`` reply must send the consumer back to its pending entries,
    not on to newer ones. The error reaches the caller instead, and at-least-once delivery redoes the
    work. A client passed in must be made so too (``retry=Retry(NoBackoff(), 0)``): one that retries is
    a :class:`ConfigError` (``redis.Redis(host=...)`` retries by default).

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
        client = redis.Redis.from_url(url_or_client, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                                      socket_connect_timeout=CONNECT_TIMEOUT_S)
        client, address, owned = client, redact(url_or_client), True
    else:
        client, address, owned = url_or_client, describe(url_or_client), False
        if retries(client):
            raise ConfigError(
                f"the Redis client for {address} re-sends commands after a connection error ({retries(client)} "
                "retries), which could apply a commit's counters twice or skip pending stream entries; make it "
                "with redis.Redis(..., retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)) or pass a URL"
            )
    with translate_errors(address):
        client.ping()
        version = str(client.info("server")["redis_version"])
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_SERVER_VERSION:
        raise RedisUnavailable(
            f"Redis at {address} is version {version}; the UIC needs Redis >= "
            f"{'.'.join(map(str, MIN_SERVER_VERSION))} (COPY, XAUTOCLAIM, Lua scripts with flags). Upgrade the server."
        )
    return client, address, owned


def retries(client: Any) -> int:
    """How many times ``client`` re-sends a command after a connection error (0: never)."""
    retry = client.get_retry() if hasattr(client, "get_retry") else None
    if retry is None:
        return 0
    return int(retry.get_retries() if hasattr(retry, "get_retries") else getattr(retry, "_retries", 0))


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
        import redis.backoff
        import redis.retry
    except ImportError as error:  # pragma: no cover - the test requirements install it
        raise RedisUnavailable(
            "the Python package `redis` is not installed; install it with `pip install redis` "
            "(it is in requirements/test.txt and the `redis` extra)"
        ) from error
    return redis
