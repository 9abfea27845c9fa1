"""Throwaway redis-server processes for the UIC tests, and the Redis entry of the store contract.

Every server gets a free loopback port and its own folder, logs each write to an append-only file
that is fsynced before the reply (``--appendfsync always``), never writes an RDB snapshot, and is
stopped when its ``with`` block ends. Tests that need one call :func:`require_redis` first: it skips
the test at run time (never at collection) when ``redis-server`` or the ``redis`` package is absent.

For the shared contract tests::

    with redis_store_factory(tmp_path) as make_store:
        store = make_store()          # a RedisStateStore on a fresh server; make_store() again reopens it
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

REDIS_SERVER = os.environ.get("RECSYS_REDIS_SERVER", "redis-server")


def require_redis() -> str:
    """The redis-server binary's path; skips the calling test when it or the `redis` package is missing."""
    binary = shutil.which(REDIS_SERVER)
    if binary is None:
        pytest.skip(f"{REDIS_SERVER} is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the Python package `redis` is not installed (pip install -r requirements/test.txt)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server on ``127.0.0.1:<free port>`` with its data in ``folder`` (AOF, fsync always)."""

    def __init__(self, folder: Path, binary: str | None = None):
        self.binary = binary or require_redis()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Starts the server (again, on the same port and data after :meth:`kill`) and waits for PING."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder),
                   "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_for_ping()
        return self

    def kill(self) -> None:
        """SIGKILL: the server dies without a shutdown (what a crash looks like)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, **kwargs):
        """A client that never re-sends a command (what the UIC's classes accept)."""
        import redis
        import redis.backoff
        import redis.retry

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                           **kwargs)

    def _wait_for_ping(self, timeout_s: float = 15.0) -> None:
        import redis

        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    log = (self.folder / "redis.log").read_text() if (self.folder / "redis.log").exists() else ""
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log[-2000:]}")
                try:
                    if client.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout_s} s")
                time.sleep(0.02)
        finally:
            client.close()


class ReplyDroppingProxy:
    """A TCP proxy to a server on ``port`` that can lose one reply, as a network failure would.

    After :meth:`drop_reply_of` ``(b"EVALSHA")`` it forwards the next command containing that word to
    the server (which runs it), then closes the client's connection instead of relaying the reply.
    """

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._armed: bytes | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_reply_of(self, word: bytes) -> None:
        self._armed = word

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            swallow = threading.Event()
            threading.Thread(target=self._pump, args=(client, upstream, swallow, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, swallow, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, swallow: threading.Event, requests: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests and self._armed and self._armed in data:
                    self._armed = None
                    swallow.set()
                elif not requests and swallow.is_set():
                    break  # the server's reply to the armed command: lost
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in ``folder``, stopped at the end of the block."""
    server = RedisServer(folder)
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def redis_store_factory(folder: Path) -> Iterator[Callable[..., object]]:
    """``make_store(namespace="uic-test")`` -> a RedisStateStore on a server of its own (per block).

    Calling ``make_store()`` again opens the same namespace (a reopened store sees what was committed).
    Stores are closed, and the server stopped, when the block ends.
    """
    from recsys.uic.redis_store import RedisStateStore

    with redis_server(Path(folder) / "redis") as server:
        stores = []

        def make_store(namespace: str = "uic-test"):
            stores.append(RedisStateStore(server.url, namespace))
            return stores[-1]

        try:
            yield make_store
        finally:
            for store in stores:
                store.close()
