import copy
import gc

import pytest
import torch
import torch.distributed as dist

from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError, DataError
from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.models.task import RankingTask
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy

SMALL = DLRMConfig(embedding_dim=8, dense_arch_layers=[16, 8], cross_layers=2, over_arch_layers=[32, 16])


def test_forward_shape_heads_and_tables(spec, batch):
    torch.manual_seed(0)
    model = DLRM(spec, DLRMConfig())
    logits = model(batch)
    assert logits.shape == (4, spec.num_actions) and torch.isfinite(logits).all()
    assert model.heads == list(spec.action_vocab)
    tables = {t.name: t for t in model.embedding_bag_configs()}
    assert set(tables) == {"t_item_id", "t_user_id", "t_surface", "t_item_category"}
    assert tables["t_item_id"].feature_names == ["item_id", *spec.history_features]
    assert tables["t_item_id"].num_embeddings == spec.num_items
    assert tables["t_item_category"].num_embeddings == 5
    two_heads = DLRM(spec, DLRMConfig(heads=["save", "click"]))
    assert two_heads(batch).shape == (4, 2) and two_heads.heads == ["save", "click"]


def test_pooling_mean_and_empty_history_is_zero(spec, batch):
    model = DLRM(spec, SMALL)
    pooled = model.sparse_arch(batch.sparse_features).to_dict()
    item_table = model.sparse_arch.embedding_bags["t_item_id"].weight
    torch.testing.assert_close(pooled["history_click"][0], item_table[[4, 5, 6]].mean(0))
    torch.testing.assert_close(pooled["item_id"][1], item_table[8])  # mean of one id = its embedding
    assert torch.all(pooled["history_click"][2] == 0) and torch.all(pooled["history_hide"][0] == 0)
    flat = model.pooled_embeddings(model.sparse_arch(batch.sparse_features))
    assert flat.shape == (4, len(spec.sparse_features) * 8)
    torch.testing.assert_close(flat[:, 8:16], pooled["item_id"])  # spec order: user_id, item_id, ...


def test_pooled_embeddings_follow_feature_names_not_keyed_tensor_order(spec, batch):
    model = DLRM(spec, SMALL)
    kt = model.sparse_arch(batch.sparse_features)
    by_name = kt.to_dict()
    reversed_keys = list(reversed(kt.keys()))
    from torchrec.sparse.jagged_tensor import KeyedTensor

    shuffled = KeyedTensor.from_tensor_list(reversed_keys, [by_name[k] for k in reversed_keys])
    torch.testing.assert_close(model.pooled_embeddings(shuffled), model.pooled_embeddings(kt))


def test_row_output_independent_of_other_rows(spec, sample_rows, make_batch):
    torch.manual_seed(0)
    model = DLRM(spec, SMALL).eval()
    rows = sample_rows
    first = make_batch(spec, rows, seed=1)
    other_rows = [rows[0], {"user": 5, "item": 11, "history": {"hide": [1, 2, 3, 4]}, "labels": []}]
    second = make_batch(spec, other_rows, seed=2)
    second.dense_features[0] = first.dense_features[0]
    torch.testing.assert_close(model(second)[0], model(first)[0])


def test_meta_device_billion_row_table_costs_no_memory():
    def rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    spec = FeatureSpec(num_users=10**8, num_items=10**9, content_dim=4)
    before = rss_bytes()
    model = DLRM(spec, DLRMConfig(), device="meta")
    grown = rss_bytes() - before
    weight = model.sparse_arch.embedding_bags["t_item_id"].weight
    assert weight.is_meta and weight.shape == (10**9, 32)
    assert grown < 100 * 2**20  # a real table would take 128 GB
    assert all(not p.is_meta for p in model.cross_net.parameters())  # dense layers are real


def test_overfits_a_tiny_batch(spec, batch):
    torch.manual_seed(0)
    model = DLRM(spec, SMALL)
    task = RankingTask(model, WeightedCrossEntropy(model.heads, spec.action_vocab))
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-2)
    first_loss = None
    for _ in range(100):
        loss, logits = task(batch)
        first_loss = first_loss if first_loss is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logits.shape == (4, spec.num_actions) and not logits.requires_grad
    assert loss.item() < first_loss / 5


def test_config_errors(spec):
    with pytest.raises(ConfigError, match="purchase"):
        DLRM(spec, DLRMConfig(heads=["purchase"]))
    with pytest.raises(ConfigError, match="embedding_dim"):
        DLRMConfig(embedding_dim=0)
    with pytest.raises(ConfigError, match="over_arch_layers"):
        DLRMConfig(over_arch_layers=[])
    model = DLRM(spec, SMALL)
    with pytest.raises(ConfigError, match="loss expects"):
        RankingTask(model, WeightedCrossEntropy(["click"], spec.action_vocab))


def test_builds_and_matches_under_distributed_model_parallel(spec, batch, tmp_path):
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import (
        column_wise,
        construct_module_sharding_plan,
        data_parallel,
        row_wise,
        table_wise,
    )
    from torchrec.distributed.types import ShardingEnv, ShardingPlan

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DLRM(spec, SMALL)
        reference = copy.deepcopy(model)
        # Sharded tables return their features in another order than spec.sparse_features.
        per_table = {"t_item_id": row_wise(), "t_user_id": table_wise(rank=0), "t_surface": data_parallel(),
                     "t_item_category": column_wise(ranks=[0])}
        module_plan = construct_module_sharding_plan(
            model.sparse_arch, per_param_sharding=per_table, device_type="cpu", world_size=1
        )
        dmp = DistributedModelParallel(
            model,
            env=ShardingEnv.from_process_group(dist.group.WORLD),
            device=torch.device("cpu"),
            plan=ShardingPlan({"sparse_arch": module_plan}),
        )
        dmp.load_state_dict(reference.state_dict())
        logits = dmp(batch)
        torch.testing.assert_close(logits, reference(batch), atol=1e-5, rtol=1e-5)
        logits.sum().backward()
        # Default plan from the planner; tables built on the meta device are materialised here.
        meta_dmp = DistributedModelParallel(
            DLRM(spec, SMALL, device="meta"),
            env=ShardingEnv.from_process_group(dist.group.WORLD),
            device=torch.device("cpu"),
        )
        meta_logits = meta_dmp(batch)
        assert meta_logits.shape == (4, spec.num_actions) and torch.isfinite(meta_logits).all()
        del dmp, meta_dmp, model, logits, meta_logits
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_batch_from_another_spec_is_a_data_error(spec, batch):
    other = FeatureSpec(num_users=7, num_items=20, item_attributes={"brand": 3}, content_dim=4)
    with pytest.raises(DataError, match="item_brand"):
        DLRM(other, SMALL)(batch)
    wider = FeatureSpec(num_users=7, num_items=20, item_attributes={"category": 5}, content_dim=8)
    with pytest.raises(DataError, match="dense_features must be"):
        DLRM(wider, SMALL)(batch)


@pytest.mark.parametrize("cross_layers", [0, 1, 3])
def test_forward_requests_equals_forward_when_rows_of_a_request_share_the_user_side(spec, make_batch, cross_layers):
    """The request side of the first cross layer computed once per request gives the per-row logits."""
    torch.manual_seed(0)
    model = DLRM(spec, DLRMConfig(embedding_dim=8, dense_arch_layers=[16, 8], cross_layers=cross_layers,
                                  over_arch_layers=[16])).eval()
    user_a = {"user": 1, "surface": 1, "history": {"click": [4, 5, 6], "hide": [9]}}
    user_b = {"user": 6, "surface": 0, "history": {}}  # empty histories
    rows = [{**user_a, "item": i, "attrs": {"category": i % 5}} for i in (3, 8, 11)]
    rows += [{**user_b, "item": 19}]
    rows += [{**user_a, "item": i} for i in (0, 2)]  # the same user again, as another request
    batch = make_batch(spec, rows, seed=3)
    offsets = torch.tensor([0, 3, 4, 6])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_requests(batch, offsets), model(batch), rtol=1e-5, atol=1e-6)
    assert model.request_side_features() == ["user_id", "surface", *spec.history_features]
