"""HSTU ranker: interleaved tokens, target-aware invariants, M-FALCON equals forward, it learns."""

import pytest
import torch

from recsys.config import load_config
from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError, DataError
from recsys.models import get_model, list_models
from recsys.models.hstu_ranking import HSTURanking
from recsys.modules.hstu import HSTUEncoder
from recsys.train.config import TrainConfig
from tests.tiny import TINY_SYNTHETIC_DATA, TINY_TRAINER, train_and_evaluate

SPEC = FeatureSpec(num_users=7, num_items=30, content_dim=4, max_sequence=6)
SMALL = dict(embedding_dim=8, num_heads=2, attention_dim=4, linear_dim=4, over_arch_layers=[8], max_candidates_per_pass=4)


def small_model(**overrides) -> HSTURanking:
    torch.manual_seed(0)
    return get_model("hstu_ranking", feature_spec=SPEC, **{**SMALL, **overrides}).double().eval()


def make_batch(histories: list[list[tuple[int, int, int, int]]], candidates: list[int], seed: int = 0) -> RankingBatch:
    """One row per candidate; a history is a list of (item, action bits, surface, timestamp)."""
    gen = torch.Generator().manual_seed(seed)
    b = len(candidates)
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.int32)
    columns = {key: [e[i] for h in histories for e in h] for i, key in enumerate(SPEC.sequence_features)}
    sequence = kjt_from_jagged({key: (torch.tensor(v, dtype=torch.int64), lengths) for key, v in columns.items()})
    one = torch.ones(b, dtype=torch.int32)
    sparse = kjt_from_jagged({
        key: (torch.tensor(candidates) if key == "item_id" else torch.arange(b) % 3, one) for key in SPEC.sparse_features
    })
    return RankingBatch(
        sparse_features=sparse,
        dense_features=torch.randn(b, SPEC.dense_dim, generator=gen, dtype=torch.float64),
        labels=torch.randint(0, 2, (b, SPEC.num_actions), generator=gen).double(),
        weights=torch.ones(b, dtype=torch.float64),
        user_id=torch.arange(b),
        item_id=torch.tensor(candidates),
        request_id=torch.zeros(b, dtype=torch.int64),
        timestamp=torch.full((b,), 10_000),
        sequence_features=sequence,
    )


HISTORIES = [
    [(3, 0b0001, 0, 100), (7, 0b0011, 1, 400), (9, 0b1000, 2, 900)],
    [],
    [(1, 0b0101, 2, 50), (2, 0b0001, 0, 60)],
    [(4, 0b0001, 0, 10), (5, 0b0010, 1, 20), (6, 0b0100, 2, 30), (8, 0b1001, 0, 40), (9, 0b0001, 1, 5000), (11, 0b1111, 2, 9000)],
]
CANDIDATES = [12, 13, 14, 15]


def test_registered_and_builds_on_meta():
    assert "hstu_ranking" in list_models("hstu*")
    meta = get_model("hstu_ranking", feature_spec=SPEC, device="meta")
    assert meta.item_embeddings.embeddings["t_item_id"].weight.is_meta
    assert meta.heads == list(SPEC.action_vocab)
    assert meta.encoder.max_seq_len == 2 * SPEC.max_sequence + meta.config.max_candidates_per_pass
    with pytest.raises(ConfigError, match="max_sequence"):
        get_model("hstu_ranking", feature_spec=SPEC, max_sequence=3)
    with pytest.raises(ConfigError, match="heads"):
        get_model("hstu_ranking", feature_spec=SPEC, heads=["nope"])


def test_forward_shapes_heads_and_missing_sequence():
    model = small_model(heads=["click", "hide"])
    batch = make_batch(HISTORIES, CANDIDATES)
    logits = model(batch)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    batch.sequence_features = None
    with pytest.raises(DataError, match="data.max_sequence"):
        model(batch)


def test_tokens_are_interleaved_items_and_actions_with_the_candidate_last(monkeypatch):
    model = small_model()
    seen = {}

    def capture(self, values, seq_offsets, timestamps=None, num_targets=None):
        seen.update(values=values, offsets=seq_offsets, timestamps=timestamps, num_targets=num_targets)
        return values

    monkeypatch.setattr(HSTUEncoder, "forward", capture)
    batch = make_batch(HISTORIES, CANDIDATES)
    model(batch)
    lengths = [2 * len(h) + 1 for h in HISTORIES]
    assert seen["offsets"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert seen["num_targets"].tolist() == [1, 1, 1, 1]
    row0 = slice(0, lengths[0])
    assert seen["timestamps"][row0].tolist() == [100, 100, 400, 400, 900, 900, 10_000]
    item_table = model.item_embeddings.embeddings["t_item_id"].weight
    tokens = seen["values"][row0]  # [7, D]: i_1 a_1 i_2 a_2 i_3 a_3 c
    expected_item = item_table[7] + model.surface_embeddings.weight[1]
    torch.testing.assert_close(tokens[2], expected_item)
    actions = model.action_embeddings
    torch.testing.assert_close(tokens[3], actions[0] + actions[1])  # bits 0b0011: click + save
    torch.testing.assert_close(tokens[5], actions[3])  # 0b1000: long_view
    candidate = item_table[12] + model.surface_embeddings.weight[0] + model.dense_projection(batch.dense_features[0])
    torch.testing.assert_close(tokens[6], candidate)


def test_empty_histories_score_the_candidate_alone():
    model = small_model()
    empty = make_batch([[], []], [12, 13])
    logits = model(empty)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    mixed = make_batch([HISTORIES[0], []], [12, 13])
    mixed.dense_features, mixed.sparse_features = empty.dense_features, empty.sparse_features
    torch.testing.assert_close(model(mixed)[1], logits[1])


def test_rows_do_not_depend_on_each_other_and_the_candidate_matters():
    model = small_model()
    batch = make_batch(HISTORIES, CANDIDATES)
    before = model(batch)
    changed_histories = [HISTORIES[0], [(20, 0b0010, 1, 70)], HISTORIES[2], HISTORIES[3][:2]]
    changed = make_batch(changed_histories, [12, 25, 14, 26])
    changed.dense_features = batch.dense_features
    after = model(changed)
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    assert not torch.allclose(after[1], before[1]) and not torch.allclose(after[3], before[3])
    other_candidate = make_batch(HISTORIES, [12, 13, 29, 15])
    other_candidate.dense_features = batch.dense_features
    moved = model(other_candidate)
    torch.testing.assert_close(moved[[0, 1, 3]], before[[0, 1, 3]])
    assert not torch.allclose(moved[2], before[2])


def mfalcon_inputs(seed: int = 1):
    """Users' histories, 3 / 0 / 5 / 2 candidates each, and each candidate as its own forward row."""
    gen = torch.Generator().manual_seed(seed)
    counts = [3, 0, 5, 2]
    items = torch.randint(0, SPEC.num_items, (sum(counts),), generator=gen)
    alone = make_batch([h for h, c in zip(HISTORIES, counts) for _ in range(c)], items.tolist(), seed=seed)
    alone.timestamp = torch.randint(10_000, 20_000, (sum(counts),), generator=gen)
    offsets = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    history = make_batch(HISTORIES, CANDIDATES).sequence_features
    surface = alone.sparse_features["surface"].values()
    kwargs = dict(item_id=items, timestamp=alone.timestamp, surface=surface, dense_features=alone.dense_features)
    return history, offsets, kwargs, alone


def test_score_candidates_equals_forward_of_each_candidate_alone():
    model = small_model()
    history, offsets, kwargs, alone = mfalcon_inputs()
    reference = model(alone)  # [Tc, H]
    for microbatch_size in (1, 2, 4):
        scored = model.score_candidates(history, offsets, microbatch_size=microbatch_size, **kwargs)
        torch.testing.assert_close(scored, reference)


def test_score_candidates_ignores_the_other_candidates():
    model = small_model()
    history, offsets, kwargs, _ = mfalcon_inputs()
    before = model.score_candidates(history, offsets, microbatch_size=4, **kwargs)
    changed = dict(kwargs, item_id=kwargs["item_id"].clone(), dense_features=kwargs["dense_features"].clone())
    changed["item_id"][[0, 4]] = torch.tensor([28, 29])
    changed["dense_features"][[0, 4]] += 1.0
    after = model.score_candidates(history, offsets, microbatch_size=4, **changed)
    keep = [1, 2, 3, 5, 6, 7, 8, 9]
    torch.testing.assert_close(after[keep], before[keep])
    assert not torch.allclose(after[[0, 4]], before[[0, 4]])
    with pytest.raises(ConfigError, match="max_candidates_per_pass"):
        model.score_candidates(history, offsets, microbatch_size=5, **kwargs)


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = get_model("hstu_ranking", feature_spec=SPEC, **{**SMALL, "dropout": 0.0})
    batch = make_batch(HISTORIES, CANDIDATES, seed=3)
    dense, labels = batch.dense_features.float(), batch.labels.float()
    batch.dense_features = dense
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    assert torch.equal((model(batch) > 0).float(), labels)


TINY = [
    *TINY_SYNTHETIC_DATA,
    "data.max_sequence=20",
    "model.embedding_dim=16",
    "model.num_layers=1",
    "model.attention_dim=8",
    "model.linear_dim=8",
    "model.over_arch_layers=[16]",
    *TINY_TRAINER,
]


def test_trains_under_the_ranking_recipe(tmp_path):
    # 300 users: with the tiny data's 120 the test split holds ~80 clicks, too few for the AUC bar
    # (train seeds 0 and 1 gave click AUC 0.65 and 0.51 there even on the earlier, leaky rows).
    cfg = load_config(TrainConfig, "configs/hstu/synthetic_ranking.yaml",
                      [*TINY, "data.synthetic.num_users=300", f"output_dir={tmp_path}"])
    test = train_and_evaluate(cfg)
    assert test["click"]["auc"] > 0.6, test


def test_attention_kernel_reaches_every_layer_and_unknown_names_are_refused():
    model = get_model("hstu_ranking", feature_spec=SPEC, **SMALL, attention_kernel="pytorch")
    kernels = {m.kernel for m in model.modules() if hasattr(m, "kernel") and isinstance(m.kernel, str)}
    assert kernels == {"pytorch"}
    with pytest.raises(ConfigError, match="model.attention_kernel"):
        get_model("hstu_ranking", feature_spec=SPEC, **SMALL, attention_kernel="flash")
