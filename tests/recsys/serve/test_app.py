"""The HTTP surface: validation names the field, auth, overload answers 503 + Retry-After within
the deadline, /metrics is Prometheus text, /ready, and the TorchX component."""

import asyncio
import re
import time

import pytest

from recsys.serve.engine import Engine
from tests.recsys.serve.helpers import engine_of, serving

pytestmark = pytest.mark.usefixtures("one_thread")


def _post_all(engine, bodies, headers=None, route="/rank", **options):
    async def go():
        async with serving(engine, **options) as client:
            responses = [await client.post(route, json=b, headers=headers) if not isinstance(b, bytes)
                         else await client.post(route, content=b, headers=headers) for b in bodies]
            return responses, (await client.get("/metrics", headers=headers)).text
    return asyncio.run(go())


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the body is not JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({"candidates": [1]}, 422, "user_id is missing"),
    ({"user_id": "3", "candidates": [1]}, 422, "user_id must be an integer"),
    ({"user_id": 3, "candidates": []}, 422, "candidates holds 0 items"),
    ({"user_id": 3, "candidates": list(range(11))}, 422, "candidates holds 11 items; send 1..10"),
    ({"user_id": 3, "candidates": 5}, 422, "candidates must be a list"),
    ({"user_id": 3, "candidates": [1, "x"]}, 422, "candidates[1] must be an integer"),
    ({"user_id": 3, "candidates": [1, 10**6]}, 422, "candidates[1]=1000000 is not an item"),
    ({"user_id": 3, "candidates": [1], "colour": 1}, 422, "unknown fields ['colour']"),
    ({"user_id": 3, "candidates": [1], "context": {"surface": "moon"}}, 422, "context.surface must be one of"),
    ({"user_id": 3, "candidates": [1], "request_time": -5}, 422, "request_time=-5 is outside"),
    ({"user_id": 10**6, "candidates": [1]}, 404, "user_id 1000000 is unknown"),
])
def test_bad_requests_get_a_4xx_naming_the_field(dlrm_run, body, status, message):
    (response,), _ = _post_all(engine_of(dlrm_run), [body], max_candidates=10)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_bearer_token_is_required_except_for_the_probes(dlrm_run):
    engine, body = engine_of(dlrm_run), {"user_id": 3, "candidates": [1, 2]}

    async def go():
        async with serving(engine, token="s3cret") as client:
            return [await client.post("/rank", json=body),
                    await client.post("/rank", json=body, headers={"Authorization": "Bearer wrong"}),
                    await client.post("/rank", json=body, headers={"Authorization": "Bearer s3cret"}),
                    await client.get("/metrics"), await client.get("/ready"), await client.get("/health")]

    statuses = [r.status_code for r in asyncio.run(go())]
    assert statuses == [401, 401, 200, 401, 200, 200]


def test_overload_sheds_with_503_and_retry_after_and_accepted_requests_meet_the_deadline(dlrm_run):
    loaded = engine_of(dlrm_run)
    engine = Engine(loaded.model, loaded.store, loaded.task, loaded.name)
    run = engine.run
    engine.run = lambda requests: (time.sleep(0.05), run(requests))[1]  # a slow model: 50 ms a batch
    deadline_ms, body = 300, {"user_id": 3, "candidates": [1, 2, 3]}

    async def go():
        async with serving(engine, queue_size=2, max_batch_requests=1, deadline_ms=deadline_ms) as client:
            async def timed():
                start = time.monotonic()
                response = await client.post("/rank", json=body)
                return response, time.monotonic() - start
            results = await asyncio.gather(*(timed() for _ in range(20)))
            return results, (await client.get("/metrics")).text

    results, metrics = asyncio.run(go())
    served = [s for r, s in results if r.status_code == 200]
    shed = [(r, s) for r, s in results if r.status_code == 503]
    assert served and shed and len(served) + len(shed) == 20
    assert all(r.headers["Retry-After"] == "1" for r, _ in shed)
    assert max(served) < 2 * deadline_ms / 1000
    assert max(s for _, s in shed) < 2 * deadline_ms / 1000  # refused promptly, never after the deadline
    assert 'recsys_serve_shed_total{route="/rank",reason="queue_full"}' in metrics
    assert f'recsys_serve_requests_total{{route="/rank",status="503"}} {len(shed)}' in metrics


SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                    r'(-?[0-9.eE+-]+|\+Inf|-Inf|NaN)$')


def test_metrics_are_prometheus_text(dlrm_run):
    _, text = _post_all(engine_of(dlrm_run), [{"user_id": 3, "candidates": [1, 2]}, b"{"])
    types = {}
    for line in text.strip().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
    assert types["recsys_serve_requests_total"] == "counter"
    assert types["recsys_serve_request_seconds"] == types["recsys_serve_batch_candidates"] == "histogram"
    assert types["recsys_serve_queue_depth"] == "gauge"
    assert 'recsys_serve_requests_total{route="/rank",status="200"} 1' in text
    assert 'recsys_serve_requests_total{route="/rank",status="400"} 1' in text
    assert 'recsys_serve_request_seconds_count{route="/rank"} 2' in text
    assert 'recsys_serve_batch_candidates_bucket{le="2"} 1' in text  # the request's 2 candidates, one batch



def test_a_failure_inside_the_model_is_a_counted_500(dlrm_run):
    loaded = engine_of(dlrm_run)
    engine = Engine(loaded.model, loaded.store, loaded.task, loaded.name)
    run = engine.run

    def failing(requests):
        if engine.warm:  # the start-up warm-up passes, requests fail
            raise RuntimeError("a failure inside the model")
        return run(requests)

    engine.run = failing
    (response,), text = _post_all(engine, [{"user_id": 3, "candidates": [1, 2]}])
    assert response.status_code == 500 and "internal error" in response.json()["error"]
    assert 'recsys_serve_errors_total{route="/rank"} 1' in text
    assert 'recsys_serve_requests_total{route="/rank",status="500"} 1' in text
