"""Fixtures of the UIC tests: a tiny MIMN ranker and the stores every contract test runs on.

``STORE_FACTORIES`` maps a store's name to a context manager ``factory(tmp_path)`` that yields
``open()``: each ``open()`` returns a store over the same backing data (so a test can close and
reopen it); leaving the block releases the backing data (the Redis entry stops its throwaway
server). Adding a store to every contract test is one line here. The Redis entry skips its tests at
run time when ``redis-server`` or the ``redis`` package is missing.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from recsys.models import get_model
from recsys.uic.sqlite_store import SQLiteStateStore
from tests.recsys.models.sequence_batches import SPEC  # 30 items, 4 actions: RankingBatches of make_batch fit
from tests.recsys.uic.redis_server import redis_store_factory

TINY = dict(embedding_dim=8, memory_slots=3, memory_dim=6, controller_dim=5, induction_dim=4, induction_top_k=2,
            over_arch_layers=[8])


@contextlib.contextmanager
def _sqlite(tmp_path):
    yield lambda: SQLiteStateStore(tmp_path / "uic.sqlite")


STORE_FACTORIES = {
    "sqlite": _sqlite,
    "redis": redis_store_factory,  # a redis-server of its own per test (skips without one)
}


def tiny_model(seed: int = 0, **overrides):
    """A MIMN ranker of tiny dims (eval mode) on :data:`SPEC`."""
    torch.manual_seed(seed)
    return get_model("mimn", feature_spec=SPEC, **{**TINY, **overrides}).eval()


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_factory(request, tmp_path):
    """``store_factory()`` -> a store over this test's backing data (each call opens it again); all closed at the end."""
    with STORE_FACTORIES[request.param](tmp_path) as opener:
        opened = []

        def open_store():
            store = opener()
            opened.append(store)
            return store

        yield open_store
        for store in opened:
            try:
                store.close()
            except Exception:  # already closed by the test
                pass


@pytest.fixture
def model():
    return tiny_model()
