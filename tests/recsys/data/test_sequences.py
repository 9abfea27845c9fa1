import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection

from recsys.data.readers import read_amazon_s3rec
from recsys.data.schema import EventLog
from recsys.data.sequences import SequenceExamples, make_sequence_dataloader
from recsys.data.splits import leave_one_out
from recsys.errors import ConfigError, DataError


def toy_log() -> EventLog:
    """User 0: engaged items 10, 11, 12, 13, 14, 15 with an impression (item 40, no action) between 14
    and 15; user 1: only 2 engaged events (stays in train); user 2: 1 engaged event."""
    rows = [  # (user, item, time, actions)
        (0, 10, 1, 1), (0, 11, 2, 2), (0, 12, 3, 1), (0, 13, 4, 1), (0, 14, 5, 3), (0, 40, 6, 0), (0, 15, 7, 1),
        (1, 20, 1, 1), (1, 21, 2, 1),
        (2, 30, 1, 1),
    ]
    user, item, time, actions = map(list, zip(*rows))
    return EventLog.from_arrays(user_id=user, item_id=item, timestamp=time, actions=actions, num_items=50)


def rows_of(examples: SequenceExamples) -> list[list[int]]:
    batch = examples.collate(np.arange(len(examples)))
    return [row.tolist() for row in batch.item_ids["item_id"].to_dense()]


def test_leave_one_out_rows():
    log = toy_log()
    split = leave_one_out(log)
    train, valid, test = (SequenceExamples.build(log, split, s, max_seq_len=50) for s in ("train", "valid", "test"))
    assert rows_of(train) == [[10, 11, 12, 13], [20, 21]]  # user 2 has no next item
    assert rows_of(valid) == [[10, 11, 12, 13]]
    assert rows_of(test) == [[10, 11, 12, 13, 14]]  # history ends with the validation target
    assert valid.collate([0]).target_item.tolist() == [14]
    assert test.collate([0]).target_item.tolist() == [15]
    assert test.collate([0]).target_timestamp.tolist() == [7]
    assert train.collate([0, 1]).user_id.tolist() == [0, 1]


def test_batch_fields_and_truncation():
    log = toy_log()
    split = leave_one_out(log)
    test = SequenceExamples.build(log, split, "test", max_seq_len=3)
    batch = test.collate([0])
    assert batch.item_ids.keys() == ["item_id"]
    assert batch.item_ids.values().tolist() == [12, 13, 14]  # the most recent 3
    assert batch.timestamps.tolist() == [3, 4, 5]
    assert batch.actions.tolist() == [1, 1, 3]
    assert batch.actions.dtype == torch.int32
    assert batch.lengths.tolist() == [3] and batch.seq_offsets.tolist() == [0, 3]
    assert batch.seen_items.values().tolist() == [10, 11, 12, 13, 14]  # not truncated
    train = SequenceExamples.build(log, split, "train", max_seq_len=3).collate([0, 1])
    assert train.item_ids.values().tolist() == [11, 12, 13, 20, 21]
    assert train.seq_offsets.tolist() == [0, 3, 5]
    assert train.target_item.tolist() == [-1, -1] and train.target_timestamp.tolist() == [-1, -1]
    assert train.seen_items is None
    moved = train.to(torch.device("cpu"))
    assert torch.equal(moved.timestamps, train.timestamps) and moved.batch_size == 2 and moved.num_tokens == 5


def test_item_ids_feed_an_embedding_collection():
    log = toy_log()
    batch = SequenceExamples.build(log, leave_one_out(log), "train", max_seq_len=50).collate([0, 1])
    collection = EmbeddingCollection(
        tables=[EmbeddingConfig(name="item_table", embedding_dim=4, num_embeddings=50, feature_names=["item_id"])]
    )
    out = collection(batch.item_ids)["item_id"]
    weight = collection.embeddings["item_table"].weight
    assert out.lengths().tolist() == [4, 2]
    assert torch.equal(out.values(), weight[batch.item_ids.values()])


def long_history_log(num_users: int, length: int) -> EventLog:
    user = np.repeat(np.arange(num_users), length)
    time = np.tile(np.arange(length), num_users)
    return EventLog.from_arrays(user_id=user, item_id=time % 97, timestamp=time, num_items=97)


def test_stochastic_length_follows_the_rule():
    # N = 16, alpha = 1.5: histories longer than 16^0.75 = 8 tokens are cut to 8 tokens with
    # probability 1 - 16^1.5 / n^2 = 1 - 64 / 400 = 0.84 for n = 20, else kept (most recent 16).
    log = long_history_log(num_users=400, length=22)  # 20 train tokens per user
    split = leave_one_out(log)
    examples = SequenceExamples.build(log, split, "train", max_seq_len=16, stochastic_length_alpha=1.5, seed=3)
    batch = examples.collate(np.arange(len(examples)), epoch=0)
    lengths = batch.lengths.numpy()
    assert set(lengths.tolist()) <= {8, 16}
    assert abs((lengths == 8).mean() - 0.84) < 0.06
    for row in batch.item_ids["item_id"].to_dense()[:20]:
        assert torch.all(row[1:] > row[:-1])  # a time-ordered subset of 0..19
        assert int(row.max()) <= 19
    again = examples.collate(np.arange(len(examples)), epoch=0)
    assert torch.equal(again.item_ids.values(), batch.item_ids.values())  # fixed by seed + epoch
    other_epoch = examples.collate(np.arange(len(examples)), epoch=1)
    assert not torch.equal(other_epoch.lengths, batch.lengths)
    one_row = examples.collate([5], epoch=0)  # independent of the batch it is in
    assert one_row.item_ids.values().tolist() == batch.item_ids["item_id"].to_dense()[5].tolist()


def test_stochastic_length_keeps_short_histories_and_is_off_by_default():
    log = long_history_log(num_users=5, length=8)  # 6 train tokens <= 16^0.75
    split = leave_one_out(log)
    sl = SequenceExamples.build(log, split, "train", max_seq_len=16, stochastic_length_alpha=1.5)
    plain = SequenceExamples.build(log, split, "train", max_seq_len=16)
    assert plain.stochastic_length_alpha is None
    assert torch.equal(sl.collate(range(5)).item_ids.values(), plain.collate(range(5)).item_ids.values())


def test_bad_settings_raise_clear_errors():
    log = toy_log()
    split = leave_one_out(log)
    with pytest.raises(ConfigError, match="stage"):
        SequenceExamples.build(log, split, "dev", max_seq_len=5)
    with pytest.raises(ConfigError, match=r"\(1, 2\]"):
        SequenceExamples.build(log, split, "train", max_seq_len=5, stochastic_length_alpha=2.5)
    with pytest.raises(ConfigError, match="training rows only"):
        SequenceExamples.build(log, split, "test", max_seq_len=5, stochastic_length_alpha=1.5)
    with pytest.raises(DataError, match="does not cover"):
        SequenceExamples.build(long_history_log(3, 30), split, "train", max_seq_len=5)
    with pytest.raises(DataError, match="row numbers"):
        SequenceExamples.build(log, split, "train", max_seq_len=5).collate([7])


def batches_as_lists(loader) -> list[list[int]]:
    return [b.item_ids.values().tolist() + [-9] + b.user_id.tolist() for b in loader]


def test_dataloader_resumes_exactly_and_passes_the_epoch():
    log = long_history_log(num_users=40, length=30)
    examples = SequenceExamples.build(log, leave_one_out(log), "train", max_seq_len=16, stochastic_length_alpha=1.6)
    loader = make_sequence_dataloader(examples, batch_size=6, shuffle=True, seed=1)
    loader.set_epoch(1)
    full = batches_as_lists(loader)
    assert len(full) == 7
    order = loader.sampler.permutation()
    assert full[0] == batches_as_lists([examples.collate(order[:6], epoch=1)])[0]

    partial = make_sequence_dataloader(examples, batch_size=6, shuffle=True, seed=1)
    partial.set_epoch(1)
    iterator = iter(partial)
    next(iterator), next(iterator)
    saved = partial.state_dict()
    resumed = make_sequence_dataloader(examples, batch_size=6, shuffle=True, seed=1)
    resumed.load_state_dict(saved)
    resumed.set_epoch(1)
    assert batches_as_lists(resumed) == full[2:]


def test_dataloader_workers_see_the_epoch():
    log = long_history_log(num_users=12, length=30)
    examples = SequenceExamples.build(log, leave_one_out(log), "train", max_seq_len=16, stochastic_length_alpha=1.6)
    in_process = make_sequence_dataloader(examples, batch_size=4, shuffle=False, seed=0)
    with_worker = make_sequence_dataloader(examples, batch_size=4, shuffle=False, seed=0, num_workers=1)
    for loader in (in_process, with_worker):
        loader.set_epoch(2)
    assert batches_as_lists(with_worker) == batches_as_lists(in_process)
    assert batches_as_lists(in_process)[0] == batches_as_lists([examples.collate(range(4), epoch=2)])[0]


def test_beauty_leave_one_out_sequences(shared_data):
    log = read_amazon_s3rec(shared_data("amazon-s3rec/Beauty.txt"), attributes_json=None)
    split = leave_one_out(log)
    stages = {s: SequenceExamples.build(log, split, s, max_seq_len=50) for s in ("train", "valid", "test")}
    valid, test = stages["valid"], stages["test"]
    assert len(valid) == len(test) == 22_363
    assert len(np.unique(valid.user)) == len(np.unique(test.user)) == 22_363
    assert np.array_equal(valid.user, test.user)
    # The test history is the validation history followed by the validation target.
    assert np.array_equal(test.start, valid.start)
    assert np.array_equal(test.end, valid.end + 1)
    assert np.array_equal(test.end - 1, valid.target)
    # No sequence holds its own target event (targets lie after the history).
    for examples in (valid, test):
        assert np.all(examples.target >= examples.end)
    train = stages["train"]
    assert np.array_equal(train.end, valid.end) and np.all(train.target == -1)
    # The held-out events are each user's last two.
    assert np.array_equal(test.target + 1, np.r_[test.start[1:], len(test.item_id)])
    batch = test.collate(np.arange(256))
    assert torch.equal(batch.target_item, torch.from_numpy(log.item_id[log.user_offsets()[1:257] - 1]))
    assert int(batch.lengths.max()) <= 50
    assert torch.equal(batch.seen_items.lengths().long(), torch.from_numpy(test.end[:256] - test.start[:256]))


@pytest.mark.parametrize("bad", [10_000, -3])
def test_sequence_ids_outside_the_item_table_are_refused(bad):
    log = toy_log()
    train = SequenceExamples.build(log, leave_one_out(log), "train", max_seq_len=50)
    train.item_id[0] = bad
    with pytest.raises(DataError, match=rf"feature 'item_id' has id {bad}, outside its table of {log.num_items} rows"):
        train.collate(np.arange(len(train)))
