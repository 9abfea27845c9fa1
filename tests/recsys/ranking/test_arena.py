"""HostArena: buckets, one copy per batch, no leak between batches, H2D bytes with and without dedup."""

import numpy as np
import pytest
import torch

from recsys.data.features import CONTEXT_FEATURES
from recsys.errors import DataError
from recsys.ranking import HostArena, RankRequest, RankRequestBatch, UserSequence

from .conftest import SMALL, request_groups, requests_from_rows


def synthetic_request(spec, num_tokens: int, num_candidates: int, seed: int = 0) -> RankRequest:
    """A user with ``num_tokens`` engaged tokens and ``num_candidates`` candidates."""
    rng = np.random.default_rng(seed)
    sequence = UserSequence(
        item_id=rng.integers(0, spec.num_items, num_tokens), actions=np.ones(num_tokens),
        surface=np.zeros(num_tokens), timestamp=np.arange(num_tokens),
        content=rng.integers(-127, 128, (num_tokens, spec.content_dim)).astype(np.int8), num_engaged=num_tokens,
        scale=0.65,
    )
    return RankRequest(0, num_tokens, sequence, candidates=rng.integers(0, spec.num_items, num_candidates))


def test_dedup_moves_at_least_8x_fewer_bytes_at_500_candidates(world):
    spec, items = world["spec"], world["log"].items
    config = SMALL.__class__(**{**SMALL.__dict__, "lifelong_max": 10_000})
    batch = RankRequestBatch.build([synthetic_request(spec, 2_000, 500)], spec, items)
    arena = HostArena(spec, 1, 512, 2048)
    counts = arena.transfer_bytes(batch, config)
    assert counts.replicated / counts.payload >= 8
    assert counts.s_all > counts.payload and counts.copied >= counts.payload
    # bytes per token, candidate and request, from the layout in recsys/ranking/arena.py's docstring
    token = spec.content_dim + 4 + 4  # int8 content, int32 action bits, int32 surface
    candidate = 8 + 8 * len(spec.item_attributes) + 4 * spec.content_dim  # item id, attributes, f32 content
    actions = spec.num_actions
    request = 8 + 8 + 4 * len(CONTEXT_FEATURES) + 8 * actions * spec.max_history + 8 * actions + 8 * 6 + 8
    assert counts.payload == request + 8 + 500 * candidate + 2_000 * token
    assert counts.replicated == 500 * (request + candidate) + 500 * 2_000 * token
    s_all = min(2_000 - 20, 12) + 4 + min(16, 6)  # lifelong_k, realtime_recent, realtime_k (no impressions)
    assert counts.s_all == 500 * (request + candidate) + 500 * s_all * token


def test_buckets_are_powers_of_two_within_the_capacity(world):
    spec, items = world["spec"], world["log"].items
    arena = HostArena(spec, 4, 600, 3000)
    batch = RankRequestBatch.build([synthetic_request(spec, 300, 20)], spec, items)
    assert (arena.bucket(batch).requests, arena.bucket(batch).candidates, arena.bucket(batch).tokens) == (1, 32, 512)
    big = RankRequestBatch.build([synthetic_request(spec, 2_900, 590)], spec, items)
    assert (arena.bucket(big).candidates, arena.bucket(big).tokens) == (600, 3000)
    with pytest.raises(DataError, match="max_tokens"):
        arena.bucket(RankRequestBatch.build([synthetic_request(spec, 3_001, 1)], spec, items))


def test_a_one_off_arena_pads_the_batch_as_a_larger_arena_does(world):
    spec, items = world["spec"], world["log"].items
    batch = RankRequestBatch.build([synthetic_request(spec, 300, 20), synthetic_request(spec, 5, 3)], spec, items)
    one_off = HostArena.for_batch(spec, batch)
    assert one_off.bucket(batch) == HostArena(spec, 4, 600, 3000).bucket(batch) == one_off.capacity
    assert (one_off.capacity.requests, one_off.capacity.candidates, one_off.capacity.tokens) == (2, 32, 512)


def test_arena_reuse_leaves_nothing_of_the_previous_batch(world):
    spec, items = world["spec"], world["log"].items
    arena = HostArena(spec, 8, 256, 4096)
    large = RankRequestBatch.build(requests_from_rows(world, request_groups(world["examples"])[:6]), spec, items)
    small = RankRequestBatch.build([synthetic_request(spec, 40, 3, seed=1)], spec, items)
    arena.load(large, items, SMALL)
    bucket, views = arena.load(small, items, SMALL)
    fresh_bucket, fresh = HostArena(spec, 8, 256, 4096).load(small, items, SMALL)
    assert bucket == fresh_bucket
    for name, view in views.items():
        assert torch.equal(view, fresh[name]), name
    assert not views["token_content"][40:].any() and not views["candidate_content"][3:].any()
    np.testing.assert_array_equal(views["token_content"][:40].numpy(), small.content)


def test_one_copy_moves_the_bucket_region(world):
    spec, items = world["spec"], world["log"].items
    arena = HostArena(spec, 1, 64, 512)
    batch = RankRequestBatch.build([synthetic_request(spec, 100, 5)], spec, items)
    bucket, views = arena.load(batch, items, SMALL)
    _, size = arena.layout(bucket)
    assert torch.equal(arena.on_device[:size], arena.host[:size])
    assert arena.last_bytes.copied == size
    np.testing.assert_array_equal(views["item_id"][:5].numpy(), batch.candidates)
