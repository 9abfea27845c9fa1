"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

::

    # HELP recsys_serve_requests_total Requests answered, by route and HTTP status.
    # TYPE recsys_serve_requests_total counter
    recsys_serve_requests_total{route="/rank",status="200"} 1523
    # TYPE recsys_serve_request_seconds histogram
    recsys_serve_request_seconds_bucket{route="/rank",le="0.005"} 12
    ...
    recsys_serve_request_seconds_bucket{route="/rank",le="+Inf"} 1523
    recsys_serve_request_seconds_sum{route="/rank"} 14.2
    recsys_serve_request_seconds_count{route="/rank"} 1523

Updates come from the event loop and the model's worker thread, so each metric holds a lock.
"""

from __future__ import annotations

import bisect
import math
import threading

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return ",".join(f'{n}="{v}"' for n, v in zip(names, escaped))


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self._values: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels) -> float:
        return self._values.get(labels, 0.0)

    def samples(self):
        with self._lock:
            items = sorted(self._values.items()) or ([((), 0.0)] if not self.label_names else [])
        for labels, value in items:
            yield self.name, _labels(self.label_names, labels), value


class Gauge(Counter):
    """A value that goes up and down (set by the server)."""

    kind = "gauge"

    def set(self, value: float, *labels) -> None:
        with self._lock:
            self._values[labels] = float(value)


class Histogram:
    """Cumulative buckets, sum and count per label set."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self.buckets = tuple(buckets) + (math.inf,)
        self._values: dict[tuple, list] = {}  # labels -> [counts per bucket..., sum]
        self._lock = threading.Lock()

    def observe(self, value: float, *labels) -> None:
        with self._lock:
            counts = self._values.setdefault(labels, [0] * len(self.buckets) + [0.0])
            counts[bisect.bisect_left(self.buckets, value)] += 1
            counts[-1] += value

    def samples(self):
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._values.items())
        for labels, counts in items:
            base = _labels(self.label_names, labels)
            running = 0
            for bound, count in zip(self.buckets, counts):
                running += count
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket", f"{base},{le}" if base else le, running
            yield f"{self.name}_sum", base, counts[-1]
            yield f"{self.name}_count", base, running


class ServerMetrics:
    """The metrics ``GET /metrics`` shows."""

    def __init__(self, extra: tuple = ()):
        """``extra``: more metrics to show (a scorer's own, e.g. the UIC fallback counter)."""
        self.requests = Counter("recsys_serve_requests_total", "Requests answered, by route and HTTP status.",
                                ("route", "status"))
        self.latency = Histogram("recsys_serve_request_seconds", "Time from arrival to answer, by route.",
                                 LATENCY_BUCKETS, ("route",))
        self.queue_depth = Gauge("recsys_serve_queue_depth", "Requests waiting for the model.")
        self.batch_requests = Histogram("recsys_serve_batch_requests", "Requests per model batch.", SIZE_BUCKETS)
        self.batch_candidates = Histogram("recsys_serve_batch_candidates", "Candidates (ranking) or users "
                                          "(retrieval) per model batch.", SIZE_BUCKETS)
        self.model_seconds = Histogram("recsys_serve_model_seconds", "Time of one model batch (features + forward).",
                                       LATENCY_BUCKETS)
        self.errors = Counter("recsys_serve_errors_total", "Requests that failed inside the server (HTTP 500).",
                              ("route",))
        self.shed = Counter("recsys_serve_shed_total", "Requests answered 503, by reason: queue_full, late (refused at "
                            "arrival: too much work ahead for the deadline), deadline, draining.",
                            ("route", "reason"))
        self._all = (self.requests, self.latency, self.queue_depth, self.batch_requests, self.batch_candidates,
                     self.model_seconds, self.errors, self.shed, *extra)

    def render(self) -> str:
        """The text exposition of every metric."""
        lines = []
        for metric in self._all:
            lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
            for name, labels, value in metric.samples():
                lines.append(f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"
