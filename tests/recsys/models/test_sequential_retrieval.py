"""SequentialRetrieval, the frame of HSTU and SASRec: unit-norm user and item vectors, a loss over
the positions that have a next item only, rows independent of each other, and the same numbers
when built on the meta device and sharded by DistributedModelParallel."""

import copy
import gc

import pytest
import torch
import torch.nn.functional as F

from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.data.sequences import ITEM_KEY, NO_TARGET, SequenceBatch
from recsys.distributed.optimizers import FusedOptimizerConfig
from recsys.distributed.process_group import init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model
from recsys.errors import ConfigError
from recsys.models import get_model
from recsys.models.sequential_retrieval import ITEM_TABLE, RetrievalLossConfig, SequentialRetrieval
from recsys.modules.sasrec import SASRecEncoder

NUM_ITEMS, D, MAX_LEN = 20, 8, 10
SPEC = FeatureSpec(num_users=5, num_items=NUM_ITEMS, max_sequence=MAX_LEN)
TINY = {
    "hstu": dict(embedding_dim=D, num_layers=1, num_heads=2, attention_dim=4, linear_dim=4, max_seq_len=MAX_LEN,
                 num_negatives=16, dropout=0.0, input_dropout=0.0),
    "sasrec": dict(embedding_dim=D, num_layers=1, num_heads=2, ffn_dim=8, max_seq_len=MAX_LEN, num_negatives=16,
                   dropout=0.0),
}
MODELS = sorted(TINY)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(name: str, device=None) -> SequentialRetrieval:
    torch.manual_seed(0)
    return get_model(name, feature_spec=SPEC, device=device, **TINY[name])


def sequence_batch(sequences: list[list[int]]) -> SequenceBatch:
    """A training-style SequenceBatch of the given item sequences (one minute between events)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)  # [B]
    items = torch.tensor([i for s in sequences for i in s], dtype=torch.int64)  # [T]
    positions = torch.cat([torch.arange(n) for n in lengths.tolist()]) if len(items) else torch.zeros(0, dtype=torch.int64)
    b = len(sequences)
    return SequenceBatch(
        item_ids=kjt_from_jagged({ITEM_KEY: (items, lengths.to(torch.int32))}),
        seq_offsets=torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
        timestamps=1_700_000_000 + 60 * positions,
        actions=torch.ones(len(items), dtype=torch.int32),
        lengths=lengths,
        user_id=torch.arange(b),
        target_item=torch.full((b,), NO_TARGET),
        target_timestamp=torch.full((b,), NO_TARGET),
    )


SEQUENCES = [[3, 4, 5, 6], [7], [10, 2, 2, 9, 1, 0], [19, 18]]


@pytest.mark.parametrize("name", MODELS)
def test_user_and_item_vectors_are_unit_norm(name):
    model = tiny_model(name).eval()
    batch = sequence_batch(SEQUENCES)
    users = model.user_vectors(batch)
    assert users.shape == (len(SEQUENCES), D)
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(len(SEQUENCES)))
    torch.testing.assert_close(model.encode(batch).norm(dim=-1), torch.ones(batch.num_tokens))
    # the user vector of a row is the encoding after its last token
    torch.testing.assert_close(users, model.encode(batch)[torch.tensor([3, 4, 10, 12])])


@pytest.mark.parametrize("name", MODELS)
def test_item_vectors_are_the_normalised_table_rows(name):
    model = tiny_model(name)
    table = model.item_embeddings.embeddings[ITEM_TABLE].weight.detach()  # [I, D]
    expected = table / table.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(model.item_vectors(), expected)
    torch.testing.assert_close(model.item_vectors(chunk_size=7), expected)  # 3 chunks, the last one short
    torch.testing.assert_close(model.embed_items(torch.tensor([5, 0, 5])), table[[5, 0, 5]])


def test_loss_reads_only_positions_that_have_a_next_item(monkeypatch):
    model = tiny_model("hstu").eval()
    batch = sequence_batch(SEQUENCES)
    seen = {}

    def record(queries, positive_ids, item_embedding):
        seen["queries"], seen["positive_ids"] = queries, positive_ids
        return queries.sum() * 0.0

    monkeypatch.setattr(model.loss, "forward", record)
    model(batch)
    # tokens 0..2 predict 4, 5, 6; the single-token row predicts nothing; and so on
    assert seen["positive_ids"].tolist() == [4, 5, 6, 2, 2, 9, 1, 0, 18]
    with_next = torch.tensor([0, 1, 2, 5, 6, 7, 8, 9, 11])  # token index of each query
    torch.testing.assert_close(seen["queries"], model.encode(batch)[with_next])


@pytest.mark.parametrize("name", MODELS)
def test_a_single_token_sequence_contributes_nothing_to_the_loss(name):
    model = tiny_model(name).eval()  # eval: no dropout, only the sampled negatives are random
    with_single = sequence_batch(SEQUENCES)
    without = sequence_batch([s for s in SEQUENCES if len(s) > 1])
    torch.manual_seed(1)
    loss_with = model(with_single)
    torch.manual_seed(1)
    loss_without = model(without)  # same queries in the same order: the same negatives are drawn
    assert loss_with.item() > 0
    torch.testing.assert_close(loss_with, loss_without)
    empty = model(sequence_batch([[4], [11]]))
    assert empty.item() == 0.0 and empty.requires_grad  # nothing to predict, still differentiable


@pytest.mark.parametrize("name", MODELS)
def test_a_sequence_is_encoded_independently_of_the_rest_of_the_batch(name):
    model = tiny_model(name).eval()
    alone = model.user_vectors(sequence_batch([[10, 2, 2, 9, 1, 0]]))
    crowded = model.user_vectors(sequence_batch([[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 2, 2, 9, 1, 0], [3]]))
    torch.testing.assert_close(crowded[1], alone[0])
    other = model.user_vectors(sequence_batch([[10, 2, 2, 9, 1, 7]]))
    assert not torch.allclose(other[0], alone[0])  # the vector does depend on the row's own items


@pytest.mark.parametrize("name", MODELS)
def test_training_lowers_the_loss_and_ranks_the_next_item_first(name):
    model = tiny_model(name)
    walk = [[(s + t) % NUM_ITEMS for t in range(6)] for s in range(NUM_ITEMS)]  # each item is followed by the next
    batch = sequence_batch(walk)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    torch.manual_seed(0)
    first = model(batch).item()
    for _ in range(60):
        loss = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 3
    model.eval()
    prefixes = sequence_batch([s[:5] for s in walk])  # the positions training saw, the next item held out
    scores = model.user_vectors(prefixes) @ model.item_vectors().T  # [B, I]
    next_items = torch.tensor([s[5] for s in walk])
    assert (scores.argmax(dim=1) == next_items).float().mean() >= 0.75  # chance: 1 / 20


@pytest.mark.parametrize("name", MODELS)
def test_evaluation_user_vector_equals_the_training_pass_at_the_same_position(name):
    """The user vector after a history, at evaluation (target held out), is the one training
    computed at that position to predict the same target: same inputs, same time bias (the
    query's t_next is the target's timestamp, read from ``batch.target_timestamp``)."""
    model = tiny_model(name).eval()
    train = sequence_batch(SEQUENCES)
    train.timestamps = 1_700_000_000 + 37 * train.timestamps.sub(1_700_000_000) ** 2  # irregular gaps
    histories = [s[:-1] for s in SEQUENCES if len(s) > 1]
    evaluation = sequence_batch(histories)
    starts = train.seq_offsets[:-1][[len(s) > 1 for s in SEQUENCES]]  # [B'] first token of each kept sequence
    lengths = torch.tensor([len(h) for h in histories])
    rows = torch.cat([torch.arange(int(a), int(a) + int(n)) for a, n in zip(starts, lengths)])  # history tokens
    evaluation.timestamps = train.timestamps[rows]
    evaluation.target_item = torch.tensor([s[-1] for s in SEQUENCES if len(s) > 1])
    evaluation.target_timestamp = train.timestamps[starts + lengths]  # the held-out event's time
    with torch.no_grad():
        want = model.encode(train)[starts + lengths - 1]  # [B', D] training: position n - 2 predicts s[-1]
        got = model.user_vectors(evaluation)
    torch.testing.assert_close(got, want)


def test_config_errors():
    encoder = SASRecEncoder(num_layers=1, embedding_dim=D, num_heads=1, max_seq_len=MAX_LEN, ffn_dim=8)
    with pytest.raises(ConfigError, match="num_items=1"):
        SequentialRetrieval(1, D, encoder, MAX_LEN, RetrievalLossConfig())
    with pytest.raises(ConfigError, match="negatives"):
        SequentialRetrieval(NUM_ITEMS, D, encoder, MAX_LEN, RetrievalLossConfig(negatives="popular"))


@pytest.mark.parametrize("name", MODELS)
def test_built_on_meta_and_sharded_matches_the_unsharded_model(name):
    ctx = init_distributed()  # a world of one process
    try:
        reference = tiny_model(name)
        meta = tiny_model(name, device="meta")
        assert meta.item_embeddings.embeddings[ITEM_TABLE].weight.is_meta
        dmp = shard_model(meta, ctx, ShardingConfig(), FusedOptimizerConfig("sgd", lr=0.5))
        assert ITEM_TABLE in str(dmp.plan)
        dmp.load_state_dict(copy.deepcopy(reference.state_dict()))
        dmp.eval()
        reference.eval()
        batch = sequence_batch(SEQUENCES)
        sharded = dmp.module
        torch.testing.assert_close(sharded.item_vectors(), reference.item_vectors())
        torch.testing.assert_close(sharded.user_vectors(batch), reference.user_vectors(batch))
        torch.manual_seed(3)
        loss = dmp(batch)
        torch.manual_seed(3)
        torch.testing.assert_close(loss, reference(batch))
        # the fused optimizer updates the sharded table inside backward: one SGD step
        before = reference.item_vectors()
        loss.backward()
        moved = (F.normalize(sharded.embed_items(torch.arange(NUM_ITEMS)), dim=-1) - before).norm(dim=-1)
        assert moved[[4, 5, 6, 2, 9, 1, 0, 18]].min() > 0  # every positive item moved
        del dmp, sharded, meta, loss
        gc.collect()
    finally:
        teardown(ctx)


def test_attention_kernel_reaches_every_hstu_layer_and_unknown_names_are_refused():
    model = get_model("hstu", feature_spec=SPEC, **TINY["hstu"], attention_kernel="pytorch")
    kernels = {m.kernel for m in model.modules() if hasattr(m, "kernel") and isinstance(m.kernel, str)}
    assert kernels == {"pytorch"}
    with pytest.raises(ConfigError, match="model.attention_kernel"):
        get_model("hstu", feature_spec=SPEC, **TINY["hstu"], attention_kernel="flash")
