"""Served retrieval: the top-K of the whole corpus equals offline top-K of the evaluation's user
vectors; exclusion follows the request."""

import asyncio

import numpy as np
import pytest
import torch

from recsys.data.sequences import SequenceExamples
from recsys.data.splits import leave_one_out
from recsys.data.pipeline import load_events
from recsys.inference import _run_config
from tests.recsys.serve.helpers import engine_of, serving

pytestmark = pytest.mark.usefixtures("one_thread")
K = 10


def _offline(run, engine, users: int = 8):
    """Test rows of the run's own pipeline: (users, target times, offline top-K items)."""
    cfg = _run_config(run)
    log = load_events(cfg.data)
    rows = SequenceExamples.build(log, leave_one_out(log), "test", cfg.data.max_sequence)
    batch = rows.collate(np.arange(users))
    with torch.no_grad():
        scores = engine.model.user_vectors(batch) @ engine.model.item_vectors().T  # [B, I]
    return batch.user_id.tolist(), batch.target_timestamp.tolist(), torch.topk(scores, K, dim=1).indices.tolist(), batch


def test_served_top_k_equals_offline_top_k(hstu_run):
    engine = engine_of(hstu_run)
    users, times, expected, _ = _offline(hstu_run, engine)

    async def go():
        async with serving(engine) as client:
            return await asyncio.gather(*(client.post("/retrieve", json={"user_id": u, "k": K, "request_time": t})
                                          for u, t in zip(users, times)))

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * len(users)
    assert [r.json()["items"] for r in responses] == expected
    for r in responses:
        assert r.json()["scores"] == sorted(r.json()["scores"], reverse=True)


def test_exclude_seen_removes_the_history_the_request_names(hstu_run):
    engine = engine_of(hstu_run)
    users, times, _, batch = _offline(hstu_run, engine, users=1)
    seen = set(batch.seen_items.values().tolist())
    k = engine.store.spec.num_items - len(seen)

    async def go(exclude):
        async with serving(engine) as client:
            body = {"user_id": users[0], "k": k, "request_time": times[0], "exclude_seen": exclude}
            return (await client.post("/retrieve", json=body)).json()["items"]

    assert not seen & set(asyncio.run(go("all")))
    assert seen & set(asyncio.run(go("none")))


def test_ranking_route_of_a_retrieval_model_is_404_naming_the_route_to_use(hstu_run):
    async def go():
        async with serving(engine_of(hstu_run)) as client:
            return await client.post("/rank", json={"user_id": 0, "candidates": [1]})

    response = asyncio.run(go())
    assert response.status_code == 404 and "/retrieve" in response.json()["error"]
