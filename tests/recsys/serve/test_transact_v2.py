"""TransAct V2 served through rank_requests: the server's scores equal the offline model's on the
stored S_all rows of the same user, candidates and time; the sequence comes from the run's store."""

import asyncio

import numpy as np
import pytest
import torch

from recsys.data.lifelong import collate_lifelong
from recsys.data.lifelong_pipeline import prepare_lifelong_data
from recsys.data.pipeline import build_ranking_data
from recsys.inference import _run_config
from recsys.serve.ranker import TransActV2Ranker
from tests.recsys.serve.helpers import engine_of, serving

pytestmark = pytest.mark.usefixtures("one_thread")


def _offline_requests(run, count: int):
    """``count`` test requests of the run: (rows, user, time, surface, items) and the split's offline batch maker."""
    cfg = _run_config(run)
    data = build_ranking_data(cfg.data, seed=cfg.train.seed)
    sequences = prepare_lifelong_data(data, cfg.data.lifelong, run / "lifelong", report=None).sequences["test"]
    examples, log = data.test, data.test.log
    surfaces = log.surface[examples.event]
    keys = np.stack([log.user_id[examples.event], examples.request_time, surfaces], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    pages = []
    for group in np.argsort(first):
        rows = np.flatnonzero(inverse.reshape(-1) == group)
        if len(rows) >= 3:
            pages.append((rows, *(int(v) for v in keys[rows[0]]), examples.item[rows]))
        if len(pages) == count:
            break
    return pages, lambda rows: collate_lifelong(examples, sequences, rows)


def test_served_transact_v2_scores_equal_offline_scores_on_the_stored_s_all(transact_v2_run):
    engine = engine_of(transact_v2_run)
    assert isinstance(engine.scorer, TransActV2Ranker)
    pages, offline_batch = _offline_requests(transact_v2_run, 4)
    assert len(pages) == 4

    async def go():
        async with serving(engine) as client:  # concurrent: batched together through one rank_requests
            return await asyncio.gather(*(client.post("/rank", json={
                "user_id": user, "candidates": items.tolist(), "request_time": time, "context": {"surface": surface}})
                for _, user, time, surface, items in pages))

    responses = asyncio.run(go())
    with torch.no_grad():
        expected = torch.sigmoid(engine.model(offline_batch(np.concatenate([p[0] for p in pages]))).float())
    served = torch.cat([torch.tensor([r.json()["scores"][h] for h in engine.heads]).T for r in responses])
    assert all(r.status_code == 200 for r in responses)
    torch.testing.assert_close(served, expected, rtol=1e-5, atol=1e-6)


def test_served_transact_v2_reads_the_lifelong_sequence(transact_v2_run):
    """The same request with the user's sequence emptied scores differently: the store is read."""
    from recsys.ranking import UserSequence, rank_requests
    from recsys.serve.features import RankingRequest

    engine = engine_of(transact_v2_run)
    pages, _ = _offline_requests(transact_v2_run, 4)
    ranker = engine.scorer
    requests = [RankingRequest(user, items, time, surface) for _, user, time, surface, items in pages]
    rank = ranker.rank_requests_of(requests)
    assert max(r.sequence.num_tokens for r in rank) > 0
    for r in rank:
        r.sequence = UserSequence.empty(engine.store.spec.content_dim, r.sequence.scale)
    with torch.inference_mode():  # as the server's worker runs (its arena holds inference tensors)
        empty = torch.sigmoid(torch.cat(rank_requests(engine.model, rank, engine.store.log.items,
                                                      lifelong=ranker.config)).float())
        assert not torch.allclose(ranker(requests), empty)
