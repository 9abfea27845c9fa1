"""The batcher under overload: late requests are refused at once, the model runs only requests that
will be answered, accepted requests meet their deadline."""

import asyncio
import time

from recsys.serve.batcher import DynamicBatcher, Overloaded
from recsys.serve.metrics import ServerMetrics

SECONDS_PER_CANDIDATE = 0.002


def _model(ran: list):
    def run(requests):
        time.sleep(SECONDS_PER_CANDIDATE * sum(size for _, size in requests))  # cost linear in candidates
        ran.extend(name for name, _ in requests)
        return [name for name, _ in requests]
    return run


async def _timed(batcher, name, size, deadline_s):
    start = time.monotonic()
    try:
        result = await batcher.submit((name, size), size, start + deadline_s)
        return name, result, time.monotonic() - start
    except Overloaded as error:
        return name, error.reason, time.monotonic() - start


def test_overload_refuses_late_requests_at_once_and_wastes_no_model_time():
    ran, deadline_s, size = [], 0.1, 10  # 20 ms of model per request: ~5 fit in a deadline
    batcher = DynamicBatcher(_model(ran), ServerMetrics(), max_requests=4, max_size=40, queue_size=100,
                             admit_fraction=1.0)  # admits up to the deadline itself

    async def go():
        await batcher.start()
        await batcher.submit(("warm", size), size, time.monotonic() + 1.0)  # the batcher learns the cost
        results = await asyncio.gather(*(_timed(batcher, i, size, deadline_s) for i in range(60)))
        await batcher.drain()
        return results

    results = asyncio.run(go())
    served = [(name, seconds) for name, outcome, seconds in results if outcome == name]
    late = [seconds for _, outcome, seconds in results if outcome == "late"]
    assert 2 <= len(served) <= 10 and len(served) + len(late) + sum(r[1] == "deadline" for r in results) == 60
    assert max(seconds for _, seconds in served) < 2 * deadline_s
    assert late and max(late) < 0.25 * deadline_s  # refused at submission, not at the deadline
    wasted = set(ran) - {"warm"} - {name for name, _ in served}
    assert len(wasted) <= 1, f"the model ran {sorted(wasted)}, whose clients got 503"
    assert abs(batcher.seconds_per_size - SECONDS_PER_CANDIDATE) < SECONDS_PER_CANDIDATE  # measured, not guessed

