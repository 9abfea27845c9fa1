import pickle
import time
from dataclasses import fields

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import RankingBatch
from recsys.data.examples import RankingExamples
from recsys.data.features import FeatureSpec
from recsys.data.loader import ResumableBatchSampler, make_dataloader
from recsys.data.schema import EventLog, ItemTable
from recsys.errors import CheckpointError, ConfigError


def synthetic_log(num_events: int, num_users: int, num_items: int, seed: int = 0) -> EventLog:
    rng = np.random.default_rng(seed)
    return EventLog.from_arrays(
        user_id=rng.integers(0, num_users, num_events),
        item_id=rng.integers(0, num_items, num_events),
        timestamp=rng.integers(1_500_000_000, 1_600_000_000, num_events),
        actions=rng.integers(0, 16, num_events),
        surface=rng.integers(0, 3, num_events),
        num_users=num_users,
        num_items=num_items,
        items=ItemTable(
            content_embedding=rng.standard_normal((num_items, 8)).astype(np.float32),
            attributes={"genre": rng.integers(0, 6, num_items)},
            attribute_cardinality={"genre": 6},
        ),
    )


@pytest.fixture(scope="module")
def examples() -> RankingExamples:
    log = synthetic_log(num_events=600, num_users=20, num_items=300)
    spec = FeatureSpec.from_log(log, max_history=6, max_sequence=4)
    return RankingExamples.build(log, np.arange(len(log)), spec, negatives_per_target=1, seed=5)


def assert_same_kjt(a: KeyedJaggedTensor, b: KeyedJaggedTensor) -> None:
    assert a.keys() == b.keys()
    assert torch.equal(a.values(), b.values())
    assert torch.equal(a.lengths(), b.lengths())


def assert_same_batches(xs: list[RankingBatch], ys: list[RankingBatch]) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for f in fields(RankingBatch):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, KeyedJaggedTensor):
                assert_same_kjt(u, v)
            else:
                assert torch.equal(u, v), f.name


# ---------------------------------------------------------------- sampler
def test_sampler_covers_every_row_once_per_epoch():
    sampler = ResumableBatchSampler(103, 10, shuffle=True, seed=3)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 11
    assert [len(b) for b in epoch0] == [10] * 10 + [3]
    assert sorted(r for b in epoch0 for r in b) == list(range(103))
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(r for b in epoch1 for r in b) == list(range(103))
    assert epoch1 != epoch0
    again = ResumableBatchSampler(103, 10, shuffle=True, seed=3)
    again.set_epoch(1)
    assert list(again) == epoch1
    assert list(ResumableBatchSampler(103, 10, shuffle=True, seed=4)) != epoch0


def test_sampler_order_and_drop_last():
    sampler = ResumableBatchSampler(25, 10, shuffle=False, drop_last=True)
    assert list(sampler) == [list(range(10)), list(range(10, 20))]
    assert len(sampler) == 2


def test_sampler_resumes_mid_epoch():
    full = ResumableBatchSampler(57, 8, shuffle=True, seed=1)
    full.set_epoch(2)
    expected = list(full)
    partial = ResumableBatchSampler(57, 8, shuffle=True, seed=1)
    partial.set_epoch(2)
    iterator = iter(partial)
    head = [next(iterator) for _ in range(3)]
    state = partial.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == (2, 3)
    restored = ResumableBatchSampler(57, 8, shuffle=True, seed=1)
    restored.load_state_dict(state)
    restored.set_epoch(2)  # a resumed loop calls it as usual; the position stays
    assert head + list(restored) == expected
    assert list(restored) == expected  # the next iteration starts the epoch afresh


def test_sampler_rejects_incompatible_state_and_settings():
    state = ResumableBatchSampler(50, 10, seed=1).state_dict()
    with pytest.raises(CheckpointError, match="batch_size=10 but this sampler has batch_size=5"):
        ResumableBatchSampler(50, 5, seed=1).load_state_dict(state)
    with pytest.raises(CheckpointError, match="lacks 'epoch'"):
        ResumableBatchSampler(50, 10, seed=1).load_state_dict({"batches_consumed": 1})
    with pytest.raises(CheckpointError, match="outside 0..5"):
        ResumableBatchSampler(50, 10, seed=1).load_state_dict(state | {"batches_consumed": 9})
    with pytest.raises(ConfigError, match="batch_size"):
        ResumableBatchSampler(50, 0)


# ---------------------------------------------------------------- loader
def test_batches_pickle(examples):
    batch = examples.collate(np.arange(16))
    back = pickle.loads(pickle.dumps(batch))
    assert_same_batches([batch], [back])


def test_loader_yields_collated_batches(examples):
    loader = make_dataloader(examples, batch_size=64, shuffle=False, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(examples) // 64)
    assert_same_batches(batches[:2], [examples.collate(np.arange(64)), examples.collate(np.arange(64, 128))])
    assert batches[-1].batch_size == len(examples) % 64


def test_workers_yield_the_same_batches(examples):
    single = make_dataloader(examples, batch_size=100, shuffle=True, seed=9, num_workers=0)
    multi = make_dataloader(examples, batch_size=100, shuffle=True, seed=9, num_workers=2)
    for epoch in range(2):
        single.set_epoch(epoch)
        multi.set_epoch(epoch)
        assert_same_batches(list(single), list(multi))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_yields_the_remaining_batches(examples, num_workers):
    def loader():
        return make_dataloader(examples, batch_size=50, shuffle=True, seed=2, num_workers=num_workers)

    uninterrupted = loader()
    expected = []
    for epoch in range(2):
        uninterrupted.set_epoch(epoch)
        expected.extend(uninterrupted)

    interrupted = loader()
    seen = []
    for batch in interrupted:
        seen.append(batch)
        if len(seen) == 7:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == (0, 7)
    del interrupted

    resumed = loader()
    resumed.load_state_dict(state)
    for epoch in range(state["epoch"], 2):
        resumed.set_epoch(epoch)
        seen.extend(resumed)
    assert_same_batches(seen, expected)


def test_collate_throughput():
    """~200k events, B=512, 50 history items per action, 4 actions: at least 50 batches/s expected;
    the bound asserted leaves room for a busy machine."""
    log = synthetic_log(num_events=200_000, num_users=2_000, num_items=20_000, seed=1)
    spec = FeatureSpec.from_log(log, max_history=50)
    examples = RankingExamples.build(log, np.arange(len(log)), spec)
    order = np.random.default_rng(0).permutation(len(examples))
    examples.collate(order[:512])
    num_batches = 30
    start = time.perf_counter()
    for k in range(num_batches):
        batch = examples.collate(order[k * 512:(k + 1) * 512])
    rate = num_batches / (time.perf_counter() - start)
    print(f"collate: {rate:.0f} batches/s (B=512, max_history=50)")
    assert batch.sparse_features["history_click"].lengths().max() == 50
    assert rate >= 10


# ---------------------------------------------------------------- batch per rank
def test_batch_size_is_per_rank(examples):
    """Each of W ranks gets ``batch_size`` rows a step; together they cover a global batch of W x batch_size."""
    ranks = [make_dataloader(examples, batch_size=16, shuffle=True, seed=3, rank=r, world_size=2) for r in range(2)]
    first = [next(iter(loader)) for loader in ranks]
    assert [batch.batch_size for batch in first] == [16, 16]
    assert ranks[0].sampler.batch_size == 32
    assert len(ranks[0]) == -(-len(examples) // 32)


def test_position_carries_over_in_rows_to_another_world_size(examples):
    from recsys.data.loader import position_for_sampler

    one = make_dataloader(examples, batch_size=16, shuffle=True, seed=3)
    batches = iter(one)
    for _ in range(4):  # 64 rows trained
        next(batches)
    two = make_dataloader(examples, batch_size=16, shuffle=True, seed=3, rank=0, world_size=2, drop_last=True)
    two.load_state_dict(position_for_sampler(one.state_dict(), two.sampler))
    assert two.state_dict()["batches_consumed"] == 2  # 2 global batches of 32 rows = the same 64 rows
    done = make_dataloader(examples, batch_size=16, shuffle=True, seed=3)
    done.load_state_dict({**one.state_dict(), "batches_consumed": len(done)})
    assert position_for_sampler(done.state_dict(), two.sampler)["batches_consumed"] == len(two)  # a finished epoch stays finished
