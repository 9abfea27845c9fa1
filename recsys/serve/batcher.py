"""Dynamic batching with deadlines and load shedding, on one asyncio event loop.

::

    handler --submit--> [bounded queue] --batcher task--> worker thread: run(requests) -> results
       ^                 full: 503 now        groups up to max_requests / max_size,          |
       |                                      waits at most max_wait for more                |
       +------ future resolved (or 503 at the deadline, Retry-After) <-----------------------+

- A request is refused at once (:class:`Overloaded`, 503) when the queue is full, when the server is
  draining, or when the work ahead of it (queued and running candidates, at the model's measured
  seconds per candidate) would take more than ``admit_fraction`` of the time to its deadline
  (reason ``late``); an accepted one waits at most until its deadline, then gets 503 as well, so an
  answer (scores or 503) always comes within the deadline plus the event loop's delay.
- Requests that can no longer finish before their deadline with the batch they would join (at the
  measured cost) are answered 503 when the batch is formed, before the model runs: under overload
  the model spends its time on requests that will be answered, not on ones whose client already
  got a 503.
- ``run`` executes in one worker thread under ``torch.inference_mode``; when a batch raises, each
  of its requests is retried alone so one bad request fails only itself.
- :meth:`DynamicBatcher.drain` (graceful shutdown) refuses new requests and answers the queued ones.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from recsys.serve.metrics import ServerMetrics


class Overloaded(Exception):
    """The request cannot be served in time (HTTP 503 with Retry-After); ``reason`` says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class _Job:
    request: Any
    size: int  # candidates (ranking) or 1 (retrieval)
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future = field(repr=False, default=None)


class DynamicBatcher:
    """Groups queued requests into model batches.

    Args:
        run: ``list of requests -> list of results`` (same order), called in the worker thread.
        metrics: where queue depth and batch sizes go.
        max_requests: most requests per batch.
        max_size: most candidates (sizes) per batch; a single larger request runs alone.
        max_wait_s: how long the first request of a batch waits for others (0: takes what is queued,
            which is what arrived while the previous batch ran).
        queue_size: most requests waiting; more are refused with 503.
        cost_smoothing: weight of the newest batch in the running mean of seconds per candidate.
        admit_fraction: a request is accepted when the expected wait is at most this share of the time
            left to its deadline (the rest is slack for batches slower than the mean). At 3x the
            sustainable load on 2 CPU cores, 0.5 answered more requests than 0.8 or 1.0 and left none to
            miss its deadline after being accepted (docs/benchmarks.md).
    """

    def __init__(self, run: Callable[[list], list], metrics: ServerMetrics, max_requests: int = 32,
                 max_size: int = 4096, max_wait_s: float = 0.0, queue_size: int = 256,
                 cost_smoothing: float = 0.2, admit_fraction: float = 0.5):
        self.run, self.metrics = run, metrics
        self.max_requests, self.max_size, self.max_wait_s = max_requests, max_size, max_wait_s
        self.queue_size = queue_size
        self._queue: asyncio.Queue | None = None
        self._carry: _Job | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-serve-model")
        self._draining = False
        self._busy = False
        self.cost_smoothing, self.admit_fraction = cost_smoothing, admit_fraction
        self.seconds_per_size: float | None = None  # running mean over batches; None until one ran
        self._backlog = 0  # sizes queued or running

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, request: Any, size: int, deadline: float) -> Any:
        """The request's result; :class:`Overloaded` when refused or not served before ``deadline``."""
        if self._draining:
            raise Overloaded("draining", "the server is shutting down; retry on another replica")
        wait, now = self.expected_seconds(size), time.monotonic()
        if wait > self.admit_fraction * (deadline - now):
            raise Overloaded("late", f"the work ahead of this request (~{wait * 1000:.0f} ms) leaves too little of "
                                     f"its deadline ({(deadline - now) * 1000:.0f} ms); retry later")
        job = _Job(request, size, deadline, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded("queue_full", f"the queue is full ({self.queue_size} requests waiting); retry later") from None
        self._backlog += size
        self.metrics.queue_depth.set(self._depth())
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            job.future.cancel()
            raise Overloaded("deadline", "the request could not be served before its deadline; retry later") from None

    def expected_seconds(self, size: int) -> float:
        """Seconds until a request of ``size`` submitted now would be answered: the queued and running
        work plus its own, at the measured seconds per candidate (0 before any batch ran)."""
        return (self._backlog + size) * (self.seconds_per_size or 0.0)

    def _depth(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Refuses new requests, answers the queued ones (up to ``timeout_s``), then stops."""
        self._draining = True
        end = time.monotonic() + timeout_s
        while (self._depth() or self._busy) and time.monotonic() < end:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ the batcher task
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.metrics.queue_depth.set(self._depth())
            live = self._answerable(batch)
            if not live:
                self._backlog -= sum(job.size for job in batch)
                continue
            self._busy = True
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [j.request for j in live],
                                                     sum(j.size for j in live))
            finally:
                self._busy = False
                self._backlog -= sum(job.size for job in batch)
            for job, result in zip(live, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _answerable(self, batch: list[_Job]) -> list[_Job]:
        """The jobs of ``batch`` the model can still answer before their deadlines, the batch ending
        when all of it is scored; the others get their 503 now."""
        now, cost, live = time.monotonic(), self.seconds_per_size or 0.0, []
        size, earliest = 0, float("inf")  # of the jobs kept so far
        for job in batch:
            if job.future.done():
                continue  # its handler gave up at the deadline
            end = now + (size + job.size) * cost  # when the batch would end with this job in it
            if end > min(earliest, job.deadline):
                job.future.set_exception(Overloaded("deadline", "the request could not be served before its "
                                                                "deadline; retry later"))
            else:
                live.append(job)
                size, earliest = size + job.size, min(earliest, job.deadline)
        return live

    async def _collect(self) -> list[_Job]:
        """The next batch: the first waiting job, then more until a limit or ``max_wait_s``."""
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], first.size
        end = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_requests and size < self.max_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
            if size + job.size > self.max_size:
                self._carry = job  # starts the next batch
                break
            batch.append(job)
            size += job.size
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_candidates.observe(size)
        return batch

    def _run_batch(self, requests: list, size: int) -> list:
        """``run`` under inference mode; on an error, each request alone (its own result or exception)."""
        start = time.perf_counter()
        with torch.inference_mode():
            try:
                results = self.run(requests)
            except Exception:
                results = []
                for request in requests:
                    try:
                        results.append(self.run([request])[0])
                    except Exception as error:  # answered as that request's error
                        results.append(error)
        seconds = time.perf_counter() - start
        self.metrics.model_seconds.observe(seconds)
        per_size, a = seconds / max(size, 1), self.cost_smoothing
        self.seconds_per_size = per_size if self.seconds_per_size is None else (1 - a) * self.seconds_per_size + a * per_size
        return results
