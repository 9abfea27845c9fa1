"""Served ranking scores equal the offline model's on the data pipeline's rows; batching and
M-FALCON's micro-batches change no score."""

import asyncio

import numpy as np
import pytest
import torch

from recsys.data.pipeline import build_ranking_data
from recsys.inference import _run_config
from tests.recsys.serve.helpers import engine_of, serving

pytestmark = pytest.mark.usefixtures("one_thread")


def _pages(run, count: int):
    """``count`` test requests of the run's data pipeline: (rows, user, request time, surface, items)."""
    cfg = _run_config(run)
    examples = build_ranking_data(cfg.data, seed=cfg.train.seed).test
    log, pages = examples.log, []
    keys = np.stack([log.user_id[examples.event], examples.request_id], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    for row in sorted(first):
        rows = np.flatnonzero((keys == keys[row]).all(axis=1))
        surfaces = log.surface[examples.event[rows]]
        if len(rows) >= 3 and (surfaces == surfaces[0]).all():
            pages.append((examples, rows, int(keys[row, 0]), int(examples.request_time[rows[0]]),
                          int(surfaces[0]), examples.item[rows]))
        if len(pages) == count:
            return pages
    raise AssertionError("the tiny run has too few test requests of 3+ rows")


def _offline(engine, examples, rows) -> dict:
    with torch.no_grad():
        p = torch.sigmoid(engine.model(examples.collate(rows)).float())  # [C, H]
    return {head: p[:, h] for h, head in enumerate(engine.heads)}


def _body(user, time, surface, items):
    return {"user_id": user, "candidates": [int(i) for i in items], "request_time": time, "context": {"surface": surface}}


@pytest.mark.parametrize("run_fixture", ["dlrm_run", "hstu_ranking_run"])
def test_served_scores_equal_offline_scores_of_the_same_rows(run_fixture, request):
    run = request.getfixturevalue(run_fixture)
    engine = engine_of(run)
    pages = _pages(run, 3)

    async def go():
        async with serving(engine) as client:
            return [await client.post("/rank", json=_body(*page[2:])) for page in pages]

    for response, (examples, rows, *_rest) in zip(asyncio.run(go()), pages):
        assert response.status_code == 200, response.text
        served = response.json()["scores"]
        for head, expected in _offline(engine, examples, rows).items():
            torch.testing.assert_close(torch.tensor(served[head]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("run_fixture", ["dlrm_run", "hstu_ranking_run"])
def test_concurrent_requests_batched_together_score_as_single_requests(run_fixture, request):
    run = request.getfixturevalue(run_fixture)
    engine = engine_of(run)
    pages = _pages(run, 6)
    bodies = [_body(*page[2:]) for page in pages]

    async def go(max_wait_ms):
        async with serving(engine, max_wait_ms=max_wait_ms) as client:
            responses = await asyncio.gather(*(client.post("/rank", json=b) for b in bodies))
            metrics = (await client.get("/metrics")).text
        return [r.json()["scores"] for r in responses], metrics

    single = []
    for body in bodies:  # one at a time: batches of one
        async def one(b=body):
            async with serving(engine, max_batch_requests=1) as client:
                return (await client.post("/rank", json=b)).json()["scores"]
        single.append(asyncio.run(one()))
    together, metrics = asyncio.run(go(50.0))
    # The batcher really grouped requests: some batch held more than one.
    counts = [line for line in metrics.splitlines() if line.startswith("recsys_serve_batch_requests_bucket")]
    assert int(next(line for line in counts if 'le="1"' in line).split()[-1]) < len(bodies)
    for a, b in zip(together, single):
        for head in a:
            torch.testing.assert_close(torch.tensor(a[head]), torch.tensor(b[head]), rtol=1e-5, atol=1e-6)


def test_mfalcon_candidates_do_not_see_each_other(hstu_ranking_run):
    engine = engine_of(hstu_ranking_run)
    _, _, user, time, surface, _ = _pages(hstu_ranking_run, 1)[0]
    few, many = [5, 17], [5, 17, 3, 99, 250, 8, 41, 120, 7, 66, 11]  # 11 candidates: 3 micro-batches of 4

    async def go():
        async with serving(engine) as client:
            return [(await client.post("/rank", json=_body(user, time, surface, items))).json()["scores"]
                    for items in (few, many, many[::-1])]

    a, b, reversed_ = asyncio.run(go())
    for head in a:
        torch.testing.assert_close(torch.tensor(b[head][:2]), torch.tensor(a[head]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(reversed_[head][::-1]), torch.tensor(b[head]), rtol=1e-5, atol=1e-6)


def test_history_is_cut_at_the_request_time(dlrm_run):
    """A later request time sees more history: the scores move; the same time gives the same scores."""
    engine = engine_of(dlrm_run)
    _, _, user, time, surface, items = _pages(dlrm_run, 1)[0]
    log = engine.store.log
    later = int(log.timestamp[log.user_id == user].max()) + 1

    async def go():
        async with serving(engine) as client:
            return [(await client.post("/rank", json=_body(user, t, surface, items))).json()["scores"]
                    for t in (time, time, later)]

    first, again, after = asyncio.run(go())
    assert first == again
    assert first != after
