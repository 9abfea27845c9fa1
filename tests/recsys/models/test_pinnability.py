"""Pinnability with each sequence encoder: [B, H] logits, backprop, DLRM without an encoder, the time
window only in training mode, sharded under DMP, overfitting a tiny batch, and the ranking recipe."""

import copy
import gc

import pytest
import torch

from recsys.config import load_config
from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.distributed.optimizers import DenseOptimizerConfig, FusedOptimizerConfig, build_optimizer
from recsys.distributed.process_group import init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model
from recsys.errors import ConfigError, DataError
from recsys.models import get_model, list_models, model_config
from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.models.pinnability import BST_ITEM_TABLE, Pinnability
from recsys.models.task import RankingTask
from recsys.modules.transact_v1 import TransActV1Quirks
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy
from recsys.train.config import TrainConfig
from recsys.train.ranking import RankingRecipe

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
    losses = []
    for _ in range(30):
        loss, _ = dmp(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses
    del dmp, optimizer, loss
    gc.collect()


TINY = [
    "data.synthetic.num_users=120",
    "data.synthetic.num_items=300",
    "data.synthetic.mean_events_per_user=60",
    "data.synthetic.heavy_user_fraction=0.0",
    "data.num_workers=0",
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
    recipe = RankingRecipe(cfg)
    recipe.setup()
    try:
        recipe.train()
        test = recipe.evaluate("test")
    finally:
        recipe.cleanup()
    assert test["click"]["auc"] > 0.6, test
