"""The HSTU ranker's KV cache across requests: every score equals the uncached ranker's and the
offline model's, whatever the cache holds (warm, appended, truncated, evicted)."""

import asyncio

import numpy as np
import pytest
import torch

from recsys.data.features import FeatureSpec
from recsys.data.schema import EventLog, ItemTable
from recsys.errors import ConfigError, DataError
from recsys.models.hstu_ranking import HSTURanking, HSTURankingConfig
from recsys.serve.config import ServeConfig
from recsys.serve.engine import Engine
from recsys.serve.features import FeatureStore, RankingRequest
from recsys.serve.kv_cache import KVCacheConfig
from recsys.serve.ranker import MFalconRanker
from tests.recsys.serve.helpers import serving

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ITEMS, MAX_SEQUENCE = 60, 16
EVENTS = {0: 26, 1: 9, 2: 5, 3: 12}  # engaged events per user (user 0's outgrow max_sequence)


def _log() -> EventLog:
    """Users with distinct engaged histories; every third event of a user is a non-engaged impression."""
    rng = np.random.default_rng(0)
    user, item, time, actions, surface = [], [], [], [], []
    for u, engaged in EVENTS.items():
        n = engaged + engaged // 2
        user += [u] * n
        item += list(rng.integers(0, NUM_ITEMS, n))
        time += list(1_700_000_000 + np.cumsum(rng.integers(1, 50_000, n)))  # seconds to half a day apart
        bits = rng.integers(1, 16, n)
        bits[2::3] = 0
        actions += list(bits)
        surface += list(rng.integers(0, 3, n))
    content = rng.normal(size=(NUM_ITEMS, 4)).astype(np.float32)
    return EventLog.from_arrays(user, item, time, actions=actions, surface=surface, num_items=NUM_ITEMS,
                                surface_vocab=("home", "search", "related"), items=ItemTable(content))


@pytest.fixture(scope="module")
def world():
    log = _log()
    spec = FeatureSpec.from_log(log, max_history=5, max_sequence=MAX_SEQUENCE)
    torch.manual_seed(0)
    config = HSTURankingConfig(embedding_dim=8, num_layers=2, num_heads=2, attention_dim=4, linear_dim=4, dropout=0.0,
                               over_arch_layers=[8], max_candidates_per_pass=4)
    model = HSTURanking(spec, config).eval()
    with torch.no_grad():  # large bias tables: a stale t_next or position would move the scores visibly
        for layer in model.encoder.layers:
            layer.relative_bias.time_weights.normal_(0.0, 1.0)
            layer.relative_bias.position_weights.normal_(0.0, 1.0)
    return model, FeatureStore(log, spec)


def _engaged_times(store, user) -> np.ndarray:
    log = store.log
    return np.sort(log.timestamp[(log.user_id == user) & (log.actions != 0)])


def _request(store, user, after_event, items, surface=1) -> RankingRequest:
    """A request of ``user`` one second after its ``after_event``-th engaged event (1-based)."""
    return RankingRequest(user, np.asarray(items, np.int64), int(_engaged_times(store, user)[after_event - 1]) + 1, surface)


def _offline(model, store, requests) -> torch.Tensor:
    """``[R, H]``: the model's forward on the data pipeline's rows, one candidate per row."""
    with torch.no_grad():
        return torch.sigmoid(model(store.ranking_batch(requests)).float())


def _scores(ranker, requests) -> torch.Tensor:
    with torch.inference_mode():
        return ranker(requests)


def _assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _lookups(ranker) -> dict:
    return {o: ranker.cache.lookups.value(o) for o in ("hit", "append", "miss")}


def test_warm_cache_equals_scratch_equals_offline(world):
    model, store = world
    requests = [_request(store, 0, 10, [3, 7, 11, 40, 2]), _request(store, 1, 9, [5, 6]),
                _request(store, 3, 4, [8, 9, 10, 12, 13, 14, 15, 16, 17])]
    cached = MFalconRanker(model, store, KVCacheConfig(num_pages=16, page_size=8))
    scratch = _scores(MFalconRanker(model, store), requests)
    cold = _scores(cached, requests)
    assert _lookups(cached) == {"hit": 0, "append": 0, "miss": 3}
    warm = _scores(cached, requests)
    assert _lookups(cached) == {"hit": 3, "append": 0, "miss": 3}
    assert cached.cache.encoded_tokens.value() == 2 * (10 + 9 + 4)  # only the cold pass encoded anything
    offline = _offline(model, store, requests)
    _assert_close(scratch, offline)
    _assert_close(cold, offline)
    _assert_close(warm, offline)


def test_appending_events_equals_recomputing_the_whole_history(world):
    """Request times walk forward (new events), back (a shorter history) and past max_sequence (the window slides)."""
    model, store = world
    cached = MFalconRanker(model, store, KVCacheConfig(num_pages=16, page_size=4))
    scratch = MFalconRanker(model, store)
    items = [1, 4, 9, 16, 25, 36]
    steps = [3, 4, 7, 7, 5, 12, 16, 17, 26]  # engaged events in the history of user 0
    expected = []
    for n in steps:
        request = [_request(store, 0, n, items)]
        before = cached.cache.encoded_tokens.value()
        _assert_close(_scores(cached, request), _scores(scratch, request))
        _assert_close(_scores(cached, request), _offline(model, store, request))  # and again: a hit
        expected.append(cached.cache.encoded_tokens.value() - before)
    # 3 -> 4: one new event is 2 tokens plus the re-encoded last token; 7 -> 5: the last kept token only;
    # 16 -> 17 and 17 -> 26: the window (16 events) slid, the oldest event differs: a miss.
    assert expected == [6, 3, 7, 0, 1, 15, 9, 32, 32]
    assert _lookups(cached) == {"hit": 10, "append": 5, "miss": 3}


def test_eviction_under_a_small_pool_keeps_scores_exact(world):
    model, store = world
    config = KVCacheConfig(num_pages=4, page_size=4)  # 16 token slots: at most two short histories
    cached, scratch = MFalconRanker(model, store, config), MFalconRanker(model, store)
    sequence = [(1, 5), (2, 5), (3, 3), (1, 6), (2, 5), (3, 4), (0, 12), (2, 5), (1, 9), (0, 13)]
    for user, events in sequence:
        request = [_request(store, user, events, [2, 3, 5, 7, 11])]
        _assert_close(_scores(cached, request), _scores(scratch, request))
        assert cached.cache.pages_used.value() <= config.num_pages
    assert cached.cache.evictions.value() > 0
    assert 0 not in cached.cache  # 26 tokens > the pool: scored, never kept
    for user, events in [(1, 9), (3, 4), (2, 5)]:  # whatever survived still scores exactly
        request = [_request(store, user, events, [2, 3, 5, 7, 11])]
        _assert_close(_scores(cached, request), _offline(model, store, request))


def test_candidates_never_see_each_other_with_a_warm_cache(world):
    model, store = world
    cached = MFalconRanker(model, store, KVCacheConfig(num_pages=16, page_size=8))
    many = [5, 17, 3, 59, 25, 8, 41, 20, 7, 36, 11]  # 11 candidates: micro-batches of 4, 4, 3
    base = _scores(cached, [_request(store, 3, 12, many)])
    changed = list(many)
    changed[5] = 50
    after = _scores(cached, [_request(store, 3, 12, changed)])
    keep = [i for i in range(len(many)) if i != 5]
    _assert_close(after[keep], base[keep])
    assert not torch.allclose(after[5], base[5])
    _assert_close(_scores(cached, [_request(store, 3, 12, many[::-1])]).flip(0), base)
    assert _lookups(cached)["hit"] == 2


def test_one_user_twice_in_a_batch_scores_each_request_exactly(world):
    model, store = world
    cached = MFalconRanker(model, store, KVCacheConfig(num_pages=16, page_size=8))
    requests = [_request(store, 1, 4, [1, 2]), _request(store, 2, 5, [3]), _request(store, 1, 8, [1, 2])]
    _assert_close(_scores(cached, requests), _offline(model, store, requests))
    _assert_close(_scores(cached, requests[2:]), _offline(model, store, requests[2:]))


def test_a_failed_encode_leaves_the_cache_consistent(world, monkeypatch):
    model, store = world
    cached = MFalconRanker(model, store, KVCacheConfig(num_pages=16, page_size=8))
    _scores(cached, [_request(store, 1, 5, [1])])
    cache = cached.cache
    with pytest.raises(DataError, match="n \\* 2 == tokens"):
        cache.encode([1], [torch.zeros(3, 4, dtype=torch.int64)], torch.zeros(5, 8), torch.tensor([0, 5]))

    def failing(*args):
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:  # a failure inside the encoder, after the entry was truncated
        patch.setattr(cache.encoder, "extend_history", failing)
        with pytest.raises(RuntimeError, match="boom"):
            _scores(cached, [_request(store, 1, 7, [1])])
    assert 1 not in cache and len(cache) == 0 and len(cache._free) == 16  # forgotten, every page back
    request = [_request(store, 1, 7, [1, 2, 3])]
    _assert_close(_scores(cached, request), _offline(model, store, request))


def test_config_rejects_bad_sizes_and_loads_from_yaml():
    from recsys.config import load_config

    with pytest.raises(ConfigError, match="kv_cache.num_pages must be an integer >= 1"):
        KVCacheConfig(num_pages=0)
    with pytest.raises(ConfigError, match="kv_cache.page_size"):
        load_config(ServeConfig, "configs/serve/hstu_ranking.yaml", ["kv_cache.page_size=-1"])
    config = load_config(ServeConfig, "configs/serve/hstu_ranking.yaml", ["kv_cache.num_pages=8"])
    assert config.kv_cache == KVCacheConfig(enabled=True, num_pages=8, page_size=64)


def test_metrics_show_hits_misses_appends_and_evictions(world):
    model, store = world
    engine = Engine(model, store, "ranking", "hstu_ranking", ServeConfig(KVCacheConfig(num_pages=4, page_size=8)))
    bodies = [{"user_id": u, "candidates": [1, 2, 3], "request_time": int(_engaged_times(store, u)[n - 1]) + 1}
              for u, n in [(1, 5), (1, 5), (1, 6), (3, 12), (2, 5)]]

    async def go():
        async with serving(engine, max_batch_requests=1) as client:
            for body in bodies:
                assert (await client.post("/rank", json=body)).status_code == 200
            return (await client.get("/metrics")).text

    text = asyncio.run(go())
    # warm-up (user 0, 26 tokens: kept), then miss, hit, append, miss (evicts user 1), miss (evicts one more).
    assert 'recsys_serve_kv_cache_lookups_total{outcome="hit"} 1' in text
    assert 'recsys_serve_kv_cache_lookups_total{outcome="append"} 1' in text
    assert 'recsys_serve_kv_cache_lookups_total{outcome="miss"} 4' in text
    evictions = next(line for line in text.splitlines() if line.startswith("recsys_serve_kv_cache_evictions_total "))
    assert int(evictions.split()[-1]) >= 2
    assert "# TYPE recsys_serve_kv_cache_pages_used gauge" in text


def test_on_cuda_the_cache_matches_the_uncached_ranker(world):
    """The device path (Triton attention, pool on the GPU): warm and appended scores equal the uncached ones."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import copy

    model, store = world
    model = copy.deepcopy(model).to("cuda")
    cached, scratch = MFalconRanker(model, store, KVCacheConfig(num_pages=16, page_size=8)), MFalconRanker(model, store)
    assert cached.cache.keys.is_cuda
    for user, events in [(3, 6), (3, 6), (3, 9), (1, 9), (3, 12)]:
        request = [_request(store, user, events, [1, 2, 3, 5, 8, 13])]
        torch.testing.assert_close(_scores(cached, request), _scores(scratch, request), rtol=1e-4, atol=1e-5)
    assert _lookups(cached) == {"hit": 1, "append": 2, "miss": 2}
