"""Pinnability with each sequence encoder: [B, H] logits, backprop, DLRM without an encoder, the time
window only in training mode, sharded under DMP, overfitting a tiny batch, and the ranking recipe;
lifelong batches (TransAct V2, S_RT[:r] for V1 and BST) and the next-action loss."""

import copy
import gc

import pytest
import torch

from recsys.config import load_config
from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.data.lifelong import (
    SOURCE_IMPRESSION,
    SOURCE_LIFELONG,
    SOURCE_REALTIME_HISTORY,
    SOURCE_REALTIME_NN,
    SOURCE_REALTIME_RECENT,
)
from recsys.distributed.optimizers import DenseOptimizerConfig, FusedOptimizerConfig, build_optimizer
from recsys.distributed.process_group import init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model
from recsys.errors import ConfigError, DataError
from recsys.models import get_model, list_models, model_config
from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.models.pinnability import BST_ITEM_TABLE, Pinnability, impression_negatives, realtime_history
from recsys.models.task import RankingTask
from recsys.modules.transact_v1 import TransActV1Quirks
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy
from recsys.train.config import TrainConfig
from tests.tiny import TINY_SYNTHETIC_DATA, train_and_evaluate

from .conftest import build_batch

SPEC = FeatureSpec(num_users=7, num_items=30, item_attributes={"category": 5}, content_dim=4, max_history=5, max_sequence=6)
SMALL = dict(embedding_dim=8, dense_arch_layers=[16, 8], cross_layers=2, over_arch_layers=[16])
ENCODERS = {
    "pinnability": {},
    "transact_v1": {"transact_v1": {"num_layers": 1, "feedforward_dim": 8, "latest_k": 2, "dropout": 0.0}},
    "bst": {"bst": {"embedding_dim": 8, "dropout": 0.0}},
}
REQUEST = 1_000_000
ROWS = [
    {"user": 1, "item": 3, "history": {"click": [4, 5, 6]}, "labels": ["click"]},
    {"user": 1, "item": 8, "surface": 1, "history": {"click": [4, 5, 6], "hide": [9]}, "labels": []},
    {"user": 2, "item": 5, "surface": 2, "labels": ["click", "save"]},
    {"user": 6, "item": 19, "history": {"save": [1], "long_view": [2, 3]}, "labels": ["hide"]},
]
# (item, action bits, surface, seconds before the request) per history event, oldest first
HISTORIES = [
    [(4, 0b0001, 0, 5_000), (5, 0b0011, 1, 600), (6, 0b0001, 0, 30)],
    [(4, 0b0001, 0, 5_000), (5, 0b0011, 1, 600), (6, 0b0001, 0, 30), (9, 0b0100, 2, 10)],
    [],
    [(1, 0b0010, 0, 90_000), (2, 0b1000, 1, 70_000), (3, 0b1000, 1, 40), (11, 0b1001, 2, 20), (12, 0b0001, 0, 15),
     (13, 0b0001, 0, 12), (14, 0b0001, 0, 5)],  # longer than max_sequence: the encoders read the latest 6
]


def make_batch(seed: int = 0) -> RankingBatch:
    batch = build_batch(SPEC, ROWS, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(h) for h in HISTORIES], dtype=torch.int32)
    events = [e for h in HISTORIES for e in h]
    columns = {
        "seq_item_id": [e[0] for e in events], "seq_actions": [e[1] for e in events],
        "seq_surface": [e[2] for e in events], "seq_timestamp": [REQUEST - e[3] for e in events],
    }
    batch.sequence_features = kjt_from_jagged({k: (torch.tensor(v, dtype=torch.int64), lengths) for k, v in columns.items()})
    batch.sequence_content = torch.randn(len(events), SPEC.content_dim, generator=gen)
    batch.timestamp = torch.full((len(ROWS),), REQUEST)
    return batch


def small_model(name: str, device=None) -> Pinnability:
    torch.manual_seed(0)
    return get_model(name, feature_spec=SPEC, device=device, **SMALL, **ENCODERS[name])


def test_zoo_entries_and_nested_overrides():
    assert {"pinnability", "transact_v1", "bst"} <= set(list_models())
    assert model_config("pinnability").sequence_encoder == "none"
    assert model_config("transact_v1").sequence_encoder == "transact_v1"
    assert model_config("bst", sequence_encoder="transact_v1").sequence_encoder == "transact_v1"
    config = model_config("transact_v1", transact_v1={"num_heads": 2, "quirks": {"readout_ignores_mask": True}})
    assert config.transact_v1.num_heads == 2 and config.transact_v1.quirks == TransActV1Quirks(readout_ignores_mask=True)
    with pytest.raises(ConfigError, match="transact_v1.num_head"):
        model_config("transact_v1", transact_v1={"num_head": 2})
    with pytest.raises(ConfigError, match="sequence_encoder"):
        model_config("pinnability", sequence_encoder="lstm")
    meta = get_model("bst", feature_spec=SPEC, device="meta")
    assert meta.sequence_arch.item_embeddings.embeddings[BST_ITEM_TABLE].weight.is_meta
    assert meta.sequence_arch.encoder.max_sequence == SPEC.max_sequence  # None = the data's


@pytest.mark.parametrize("name", list(ENCODERS))
def test_logits_per_head_and_backprop(name):
    model = small_model(name).train()
    logits = model(make_batch())
    assert logits.shape == (4, SPEC.num_actions) and torch.isfinite(logits).all()
    logits.sum().backward()
    if name != "pinnability":
        grads = [p.grad for p in model.sequence_arch.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        base = DLRM(SPEC, DLRMConfig(**SMALL))
        assert model.cross_net.kernels[0].shape[0] == base.cross_net.kernels[0].shape[0] + model.sequence_arch.output_dim


def test_without_an_encoder_it_is_dlrm():
    model = small_model("pinnability").eval()
    assert model.sequence_arch is None
    dlrm = DLRM(SPEC, DLRMConfig(**SMALL)).eval()
    dlrm.load_state_dict(model.state_dict())
    batch = make_batch()
    torch.testing.assert_close(model(batch), dlrm(batch))


def test_the_time_window_is_drawn_in_training_mode_only():
    model = small_model("transact_v1")
    batch = make_batch()
    model.eval()
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    draws = [model(batch) for _ in range(4)]
    assert any(not torch.allclose(draws[0], d) for d in draws[1:])  # the windows hide different actions


@pytest.mark.parametrize("name", ["transact_v1", "bst"])
def test_missing_sequence_inputs_are_data_errors(name):
    model = small_model(name)
    batch = make_batch()
    batch.sequence_features = None
    with pytest.raises(DataError, match="data.max_sequence"):
        model(batch)
    if name == "transact_v1":
        batch = make_batch()
        batch.sequence_content = None
        with pytest.raises(DataError, match="sequence_content"):
            model(batch)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_overfits_a_tiny_batch(name):
    model = small_model(name)
    task = RankingTask(model, WeightedCrossEntropy(model.heads, SPEC.action_vocab))
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-2)
    batch = make_batch(seed=3)
    first = None
    for _ in range(60):
        loss, _ = task(batch)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 5


@pytest.fixture
def ctx():
    context = init_distributed()  # a world of one process
    yield context
    teardown(context)


def train_steps(dmp, optimizer, batch, steps: int) -> list[float]:
    """The losses of ``steps`` optimizer steps of a sharded RankingTask on one batch."""
    losses = []
    for _ in range(steps):
        loss, _ = dmp(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["transact_v1", "bst"])
def test_sharded_matches_unsharded_and_trains(ctx, name):
    reference = small_model(name).eval()
    task = RankingTask(small_model(name, device="meta"), WeightedCrossEntropy(reference.heads, SPEC.action_vocab))
    dmp = shard_model(task, ctx, ShardingConfig(), FusedOptimizerConfig("row_wise_adagrad", lr=0.1))
    if name == "bst":
        assert BST_ITEM_TABLE in str(dmp.plan)
    dmp.load_state_dict({f"model.{k}": v for k, v in copy.deepcopy(reference.state_dict()).items()})
    batch = make_batch(seed=5)
    dmp.eval()
    with torch.no_grad():  # a forward with gradients on would leave DDP waiting for its backward
        _, logits = dmp(batch)
    torch.testing.assert_close(logits, reference(batch), atol=1e-5, rtol=1e-5)
    dmp.train()
    optimizer = build_optimizer(dmp, DenseOptimizerConfig(name="adam", lr=0.01))
    losses = train_steps(dmp, optimizer, batch, steps=30)
    assert losses[-1] < losses[0] / 2, losses
    del dmp, optimizer
    gc.collect()


TINY = [
    *TINY_SYNTHETIC_DATA,
    "data.max_sequence=16",
    "model.embedding_dim=8",
    "model.dense_arch_layers=[16, 8]",
    "model.cross_layers=1",
    "model.over_arch_layers=[16]",
    "model.transact_v1.feedforward_dim=16",
    "model.transact_v1.latest_k=4",
    "train.batch_size=256",
    "train.epochs=2",
    "train.progress=false",
    "train.baseline=false",
    "train.checkpoint_every=0",
]


def test_trains_under_the_ranking_recipe(tmp_path):
    cfg = load_config(TrainConfig, "configs/transact/transact_v1_synthetic.yaml", [*TINY, f"output_dir={tmp_path}"])
    test = train_and_evaluate(cfg)
    assert test["click"]["auc"] > 0.6, test


# ---------------------------------------------------------------- lifelong batches, TransAct V2, next-action loss
LL, RT, RT_NN, IMP = SOURCE_LIFELONG, SOURCE_REALTIME_RECENT, SOURCE_REALTIME_NN, SOURCE_IMPRESSION
# S_all per row: (item, action bits, surface, seconds before the request, source), in S_all order
S_ALL = [
    [(21, 0b0001, 0, 900_000, LL), (22, 0b0010, 1, 800_000, LL), (4, 0b0001, 0, 5_000, RT), (5, 0b0011, 1, 600, RT),
     (6, 0b0001, 0, 30, RT), (23, 0b0100, 2, 90_000, RT_NN), (24, 0, 0, 400, IMP), (25, 0, 1, 200, IMP)],
    [(4, 0b0001, 0, 5_000, RT), (9, 0b0100, 2, 10, RT), (26, 0, 0, 50, IMP)],
    [],
    [(27, 0b1000, 1, 700_000, LL), (2, 0b1000, 1, 70_000, RT), (3, 0b1000, 1, 40, RT), (11, 0b1001, 2, 20, RT),
     (12, 0b0001, 0, 15, RT), (4, 0, 0, 300, IMP), (28, 0, 2, 100, IMP), (29, 0, 0, 60, IMP)],
]
V2_SMALL = {"transact_v2": {"max_sequence": 8, "model_dim": 8, "feedforward_dim": 8, "dropout": 0.0},
            "next_action_loss": {"max_queries": 64}}


def with_sequence(batch: RankingBatch, rows: list[list[tuple]], lifelong: bool, seed: int = 0) -> RankingBatch:
    """``batch`` with the sequence ``rows`` (and a ``seq_source`` key for lifelong batches)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = [t for row in rows for t in row]
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int32)
    columns = {"seq_item_id": [t[0] for t in tokens], "seq_actions": [t[1] for t in tokens],
               "seq_surface": [t[2] for t in tokens], "seq_timestamp": [REQUEST - t[3] for t in tokens]}
    if lifelong:
        columns["seq_source"] = [t[4] for t in tokens]
    batch = copy.copy(batch)
    batch.sequence_features = kjt_from_jagged({k: (torch.tensor(v, dtype=torch.int64), lengths) for k, v in columns.items()})
    content = torch.randn(100, SPEC.content_dim, generator=gen)  # one vector per item id: same item, same content
    batch.sequence_content = content[torch.tensor([t[0] for t in tokens], dtype=torch.int64)]
    return batch


def lifelong_batch(seed: int = 0) -> RankingBatch:
    return with_sequence(make_batch(seed), S_ALL, lifelong=True, seed=seed)


def realtime_only_batch(seed: int = 0) -> RankingBatch:
    """The plain batch whose history is exactly S_RT[:r] of :func:`lifelong_batch`."""
    return with_sequence(make_batch(seed), [[t for t in row if t[4] == RT] for row in S_ALL], lifelong=False, seed=seed)


def v2_model(device=None, **overrides) -> Pinnability:
    torch.manual_seed(0)
    return get_model("transact_v2", feature_spec=SPEC, device=device, **SMALL, **{**V2_SMALL, **overrides})


def test_transact_v2_zoo_entry_logits_and_next_action_loss():
    assert "transact_v2" in list_models() and model_config("transact_v2").next_action_loss.enabled
    assert model_config("transact_v2", next_action_loss={"negatives": "in_batch"}).next_action_loss.enabled  # merged
    model = v2_model().train()
    logits = model(lifelong_batch())
    assert logits.shape == (4, SPEC.num_actions) and torch.isfinite(logits).all()
    assert model.auxiliary_loss.dim() == 0 and model.auxiliary_loss > 0 and model.auxiliary_loss_weight == 0.01
    (logits.sum() + model.auxiliary_loss).backward()
    assert model.sequence_arch.next_action_loss.item_projection.weight.grad.abs().sum() > 0
    assert model.sequence_arch.encoder.readout_projection.weight.grad.abs().sum() > 0
    meta = v2_model(device="meta")
    assert meta.sequence_arch.encoder.position_embedding.weight.device.type == "cpu"
    with pytest.raises(DataError, match="data.lifelong.enabled"):
        model(make_batch())  # a plain batch has no S_all


def test_transact_v2_next_action_pairs_are_consecutive_realtime_recent_tokens():
    model = v2_model(next_action_loss={"negatives": "in_batch"}).eval()
    batch = lifelong_batch()
    model(batch)
    arch = model.sequence_arch
    features = batch.sequence_features.to_dict()
    lengths = features["seq_actions"].lengths()
    encoding = arch.encoder.encode(lengths, features["seq_actions"].values(), features["seq_surface"].values(),
                                   batch.sequence_content, batch.dense_features[:, : SPEC.content_dim])
    # row 0: RT tokens 2,3,4; row 3: RT tokens 12..15. Row 1's pair 8 -> 9 is left out: token 9 is a
    # hide, an engagement but no positive next action.
    query = torch.tensor([2, 3, 12, 13, 14])
    following = query + 1
    items = features["seq_item_id"].values()
    expected = arch.next_action_loss(encoding.outputs[query], batch.sequence_content[following], items[following])
    torch.testing.assert_close(model.auxiliary_loss, expected)


@pytest.mark.parametrize("name", ["transact_v1", "bst"])
def test_lifelong_batches_give_v1_and_bst_their_realtime_recent_part(name):
    model = small_model(name).eval()
    torch.testing.assert_close(model(lifelong_batch()), model(realtime_only_batch()))


def test_transact_v1_with_the_next_action_loss():
    with pytest.raises(ConfigError, match="causal"):
        model_config("transact_v1", next_action_loss={"enabled": True})
    with pytest.raises(ConfigError, match="TransAct encoder"):
        model_config("bst", next_action_loss={"enabled": True})
    overrides = {"transact_v1": {**ENCODERS["transact_v1"]["transact_v1"], "causal": True, "time_window_seconds": 0}}
    for negatives, batch in (("in_batch", realtime_only_batch()), ("impressions", lifelong_batch())):
        torch.manual_seed(0)
        model = get_model("transact_v1", feature_spec=SPEC, **SMALL, **overrides,
                          next_action_loss={"enabled": True, "negatives": negatives}).train()
        logits = model(batch)
        assert torch.isfinite(logits).all() and model.auxiliary_loss > 0
        model.auxiliary_loss.backward()
        assert model.sequence_arch.next_action_loss.item_projection.weight.grad.abs().sum() > 0
    with pytest.raises(DataError, match="impression"):
        model(realtime_only_batch())  # impression negatives need the impression tokens of lifelong batches


def test_causal_transact_v1_outputs_ignore_newer_actions():
    overrides = {"transact_v1": {**ENCODERS["transact_v1"]["transact_v1"], "causal": True, "time_window_seconds": 0}}
    model = get_model("transact_v1", feature_spec=SPEC, **SMALL, **overrides).eval()
    batch = realtime_only_batch()
    changed = copy.copy(batch)
    changed.sequence_content = batch.sequence_content.clone()
    changed.sequence_content[2] += 3.0  # row 0's newest action (rows are oldest first: tokens 0, 1, 2)
    arch = model.sequence_arch

    def outputs(b):
        history = realtime_history(b, "transact_v1")
        return arch.encoder.encode(history.lengths, history.actions, history.content, history.timestamp, b.timestamp,
                                   b.dense_features[:, : SPEC.content_dim]).outputs

    before, after = outputs(batch), outputs(changed)
    torch.testing.assert_close(after[0, 1:3], before[0, 1:3])  # older actions (positions 1, 2 newest first) unchanged
    assert not torch.allclose(after[0, 0], before[0, 0])


def test_transact_v2_sharded_trains_with_the_next_action_loss(ctx):
    model = v2_model(device="meta")
    task = RankingTask(model, WeightedCrossEntropy(model.heads, SPEC.action_vocab))
    dmp = shard_model(task, ctx, ShardingConfig(), FusedOptimizerConfig("row_wise_adagrad", lr=0.1))
    optimizer = build_optimizer(dmp, DenseOptimizerConfig(name="adam", lr=0.01))
    batch = lifelong_batch(seed=2)
    losses = train_steps(dmp, optimizer, batch, steps=20)
    assert losses[-1] < losses[0] / 2, losses
    del dmp, optimizer
    gc.collect()


def test_impression_negatives_carry_each_tokens_user():
    batch = lifelong_batch()
    content, ids, users = impression_negatives(batch, "impressions")
    assert ids.tolist() == [24, 25, 26, 4, 28, 29]
    assert users.tolist() == [batch.user_id[r].item() for r in (0, 0, 1, 3, 3, 3)]
    assert impression_negatives(batch, "in_batch") == (None, None, None)


def test_v2_next_action_loss_scores_each_query_against_its_own_users_impressions():
    """Rows 0 and 3 hold the pairs; with users made equal the loss changes (more negatives per query)."""
    model = v2_model().eval()
    batch = lifelong_batch()
    batch.user_id = torch.tensor([0, 1, 2, 3])
    model(batch)
    separate = model.auxiliary_loss
    arch = model.sequence_arch
    features = batch.sequence_features.to_dict()
    lengths = features["seq_actions"].lengths()
    encoding = arch.encoder.encode(lengths, features["seq_actions"].values(), features["seq_surface"].values(),
                                   batch.sequence_content, batch.dense_features[:, : SPEC.content_dim])
    query = torch.tensor([2, 3, 12, 13, 14])
    items = features["seq_item_id"].values()
    impressions = features["seq_source"].values() == SOURCE_IMPRESSION
    token_users = torch.repeat_interleave(batch.user_id, lengths.to(torch.int64))
    expected = arch.next_action_loss(encoding.outputs[query], batch.sequence_content[query + 1], items[query + 1],
                                     batch.sequence_content[impressions], items[impressions],
                                     query_users=token_users[query], negative_users=token_users[impressions])
    torch.testing.assert_close(separate, expected)
    pooled = arch.next_action_loss(encoding.outputs[query], batch.sequence_content[query + 1], items[query + 1],
                                   batch.sequence_content[impressions], items[impressions])
    assert not torch.isclose(separate, pooled)


RH = SOURCE_REALTIME_HISTORY
# The realtime history stored after S_all: S_RT's latest events (older ones than S_RT[:r] first).
HISTORY = [
    [(13, 0b0001, 0, 9_000, RH), (14, 0b0010, 1, 8_000, RH)] + [(t[0], t[1], t[2], t[3], RH) for t in S_ALL[0] if t[4] == RT],
    [(15, 0b1000, 2, 7_000, RH)] + [(t[0], t[1], t[2], t[3], RH) for t in S_ALL[1] if t[4] == RT],
    [],
    [(t[0], t[1], t[2], t[3], RH) for t in S_ALL[3] if t[4] == RT],
]


@pytest.mark.parametrize("name", ["transact_v1", "bst"])
def test_v1_and_bst_read_the_stored_realtime_history_of_a_lifelong_batch(name):
    """Not just S_RT[:r]: the stored history's latest events (V1: the paper's 100 by default)."""
    model = small_model(name).eval()
    lifelong = with_sequence(make_batch(), [row + history for row, history in zip(S_ALL, HISTORY)], lifelong=True)
    plain = with_sequence(make_batch(), HISTORY, lifelong=False)
    torch.testing.assert_close(model(lifelong), model(plain))
    assert not torch.allclose(model(lifelong), model(realtime_only_batch()))


def test_transact_v1_reads_100_actions_unless_configured():
    spec = FeatureSpec(num_users=7, num_items=30, content_dim=4, max_sequence=0)  # lifelong data: no plain history
    model = get_model("transact_v1", feature_spec=spec, **SMALL, **ENCODERS["transact_v1"])
    assert model.sequence_arch.encoder.max_sequence == 100
    configured = get_model("transact_v1", feature_spec=spec, **SMALL, transact_v1={"max_sequence": 32})
    assert configured.sequence_arch.encoder.max_sequence == 32


def test_transact_v2_drops_the_stored_realtime_history():
    model = v2_model().eval()
    with_history = with_sequence(make_batch(), [row + history for row, history in zip(S_ALL, HISTORY)], lifelong=True)
    logits, loss = model(with_history), model.auxiliary_loss
    torch.testing.assert_close(logits, model(lifelong_batch()))
    torch.testing.assert_close(loss, model.auxiliary_loss)
