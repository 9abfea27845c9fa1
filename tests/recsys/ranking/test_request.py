"""RankRequest / RankRequestBatch: the store's sequence before the request, validation, dedup layout."""

import numpy as np
import pytest

from recsys.errors import DataError
from recsys.ranking import RankRequest, RankRequestBatch, UserSequence

from .conftest import SMALL, request_groups, requests_from_rows


def heavy_user_request(world) -> RankRequest:
    store, log = world["store"], world["log"]
    user = int(np.argmax(np.bincount(log.user_id)))
    time = int(np.median(log.timestamp[log.user_id == user]))
    return RankRequest(user, time, UserSequence.from_store(store, user, time, SMALL), candidates=np.array([1, 2, 3]))


def test_sequence_from_store_is_the_windows_before_the_request(world):
    request = heavy_user_request(world)
    log, sequence = world["log"], request.sequence
    before = (log.user_id == request.user_id) & (log.timestamp < request.request_time)
    engaged_items = np.unique(log.item_id[before & (log.actions != 0)])  # merged: one record per item
    assert sequence.num_engaged == min(len(engaged_items), SMALL.lifelong_max + SMALL.realtime_max)
    impressions = int((before & log.impression & (log.actions == 0)).sum())
    assert sequence.num_tokens - sequence.num_engaged == min(impressions, SMALL.impression_max)
    assert sequence.timestamp.max() < request.request_time
    engaged = sequence.num_engaged
    assert np.all(sequence.actions[:engaged] != 0) and np.all(sequence.actions[engaged:] == 0)


def test_batch_holds_each_sequence_once_with_candidate_offsets(world):
    requests = requests_from_rows(world, request_groups(world["examples"])[:5])
    batch = RankRequestBatch.build(requests, world["spec"], world["log"].items)
    assert batch.num_tokens == sum(r.sequence.num_tokens for r in requests)
    for r, request in enumerate(requests):
        lo, hi = batch.candidate_offsets[r], batch.candidate_offsets[r + 1]
        np.testing.assert_array_equal(batch.candidates[lo:hi], request.candidates)
        t0, t1 = batch.token_offsets[r], batch.token_offsets[r + 1]
        np.testing.assert_array_equal(batch.content[t0:t1], request.sequence.content)
    sizes = [r.num_candidates for r in requests]
    np.testing.assert_array_equal(batch.candidate_request(), np.repeat(np.arange(5), sizes))


def test_invalid_requests_raise_clear_errors(world):
    request = heavy_user_request(world)
    spec, items = world["spec"], world["log"].items
    with pytest.raises(DataError, match="non-empty"):
        RankRequest(request.user_id, request.request_time, request.sequence, candidates=np.array([], dtype=np.int64))
    with pytest.raises(DataError, match="predate"):  # a sequence read at a later time holds later tokens
        later = UserSequence.from_store(world["store"], request.user_id, request.request_time + 30 * 86400, SMALL)
        RankRequest(request.user_id, request.request_time, later, candidates=np.array([1]))
    with pytest.raises(DataError, match="unknown candidate ids"):
        bad = RankRequest(request.user_id, request.request_time, request.sequence, candidates=np.array([1, 10**6]))
        RankRequestBatch.build([bad], spec, items)
    with pytest.raises(DataError, match="user_id"):
        RankRequestBatch.build([RankRequest(10**6, request.request_time, request.sequence, np.array([1]))], spec, items)
    with pytest.raises(DataError, match="unknown history keys"):
        RankRequestBatch.build([RankRequest(request.user_id, request.request_time, request.sequence, np.array([1]),
                                            history={"history_purchase": np.array([1])})], spec, items)
    with pytest.raises(DataError, match="time order"):
        s = request.sequence
        UserSequence(s.item_id, s.actions, s.surface, s.timestamp[::-1].copy(), s.content, s.num_engaged, s.scale)
    with pytest.raises(DataError, match="int8"):
        s = request.sequence
        UserSequence(s.item_id, s.actions, s.surface, s.timestamp, s.content.astype(np.float32), s.num_engaged, s.scale)
    with pytest.raises(DataError, match="at least one"):
        RankRequestBatch.build([], spec, items)
