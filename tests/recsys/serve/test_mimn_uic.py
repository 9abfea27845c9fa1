"""MIMN served from a running UIC (recsys uic's HTTP app on a real port): the scores equal the
offline model's on the same rows when the UIC holds each user's events before the request; with
the UIC down, requests are answered from the empty state and /metrics counts the fallback."""

import asyncio
import socket
import threading
import time

import numpy as np
import pytest
import torch

from recsys.data.pipeline import build_ranking_data
from recsys.inference import _run_config
from recsys.serve.engine import Engine
from recsys.uic.center import UserInterestCenter, model_version_of
from recsys.uic.event_log import event_ids, events_of
from recsys.uic.sqlite_store import SQLiteStateStore
from tests.recsys.serve.helpers import serving

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pages(run, count: int):
    """``count`` test requests of distinct users: (rows, user, time, surface, items) and the split's rows."""
    cfg = _run_config(run)
    examples = build_ranking_data(cfg.data, seed=cfg.train.seed).test
    log = examples.log
    keys = np.stack([log.user_id[examples.event], examples.request_time, log.surface[examples.event]], axis=1)
    pages, users = [], set()
    for row in range(len(examples)):
        user = int(keys[row, 0])
        if user in users:
            continue
        rows = np.flatnonzero((keys == keys[row]).all(axis=1))
        users.add(user)
        pages.append((rows, user, int(keys[row, 1]), int(keys[row, 2]), examples.item[rows]))
        if len(pages) == count:
            return pages, examples
    raise AssertionError("the tiny run has too few test users")


class _UIC:
    """``recsys uic``'s app over a SQLite store, on a loopback port, in a thread of this process."""

    def __init__(self, model, path):
        import uvicorn

        from recsys.uic.http_service import create_app

        self.center = UserInterestCenter(model, SQLiteStateStore(path), model_version_of(model))
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.center), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "the UIC did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _rank(engine, pages):
    async def go():
        async with serving(engine) as client:
            responses = [await client.post("/rank", json={"user_id": user, "candidates": items.tolist(),
                                                          "request_time": time, "context": {"surface": surface}})
                         for _, user, time, surface, items in pages]
            return responses, (await client.get("/metrics")).text
    return asyncio.run(go())


def _scores(engine, responses) -> torch.Tensor:
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return torch.cat([torch.tensor([r.json()["scores"][h] for h in engine.heads]).T for r in responses])


def test_scores_from_the_uic_equal_offline_scores_and_a_down_uic_falls_back_counted(mimn_run, tmp_path):
    pages, examples = _pages(mimn_run, 4)
    rows = np.concatenate([p[0] for p in pages])
    up = Engine.load(mimn_run, uic_url="http://127.0.0.1:1")  # the URL is replaced below, once the UIC runs
    model, log = up.model, up.store.log
    batch = examples.collate(rows)
    assert int(batch.sequence_features["seq_item_id"].lengths().max()) < up.store.spec.max_sequence  # whole histories
    with torch.no_grad():
        offline = torch.sigmoid(model(batch).float())
        empty = torch.sigmoid(model.score(model.init_state(len(rows)), batch.item_id, batch.dense_features).float())

    with _UIC(model, tmp_path / "uic.sqlite") as uic:
        ids, offsets = event_ids(log), log.user_offsets()
        for _, user, time, _, _ in pages:  # what the UIC has ingested by each request's time
            events = events_of(log, int(offsets[user]), int(offsets[user + 1]), ids)
            uic.center.apply([e for e in events if e.timestamp < time])
        up.scorer.states.url = f"http://127.0.0.1:{uic.port}"
        responses, metrics = _rank(up, pages)
        torch.testing.assert_close(_scores(up, responses), offline, rtol=1e-5, atol=1e-6)
        assert "recsys_serve_uic_fallback_total" in metrics and 'reason="' not in metrics.split("uic_fallback")[-1]

    # The UIC is gone: the same requests are answered from the empty state, and counted.
    responses, metrics = _rank(up, pages)
    torch.testing.assert_close(_scores(up, responses), empty, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(offline, empty)
    fallbacks = len(pages) + 1  # and the start-up warm-up request's user
    assert f'recsys_serve_uic_fallback_total{{reason="unreachable"}} {fallbacks}' in metrics


def test_states_of_another_model_version_are_not_used(mimn_run, tmp_path):
    """A UIC running other weights answers, but its states belong to another model: empty state, counted."""
    import copy

    pages, _ = _pages(mimn_run, 2)
    engine = Engine.load(mimn_run, uic_url="http://127.0.0.1:1")
    other = copy.deepcopy(engine.model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with _UIC(other, tmp_path / "uic.sqlite") as uic:
        engine.scorer.states.url = f"http://127.0.0.1:{uic.port}"
        responses, metrics = _rank(engine, pages)
    assert all(r.status_code == 200 for r in responses)
    assert f'recsys_serve_uic_fallback_total{{reason="model_version"}} {len(pages) + 1}' in metrics
