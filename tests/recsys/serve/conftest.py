"""Tiny trained runs (session-scoped) and in-process servers for the model server's tests."""

import pytest
import torch

from recsys.cli import main
from tests.tiny import TINY_SYNTHETIC_DATA, TINY_SYNTHETIC_DLRM, TINY_TRAINER

TINY_HSTU_RANKING = [
    *TINY_SYNTHETIC_DATA,
    "model.embedding_dim=8", "model.num_layers=1", "model.attention_dim=4", "model.linear_dim=4",
    "model.over_arch_layers=[8]", "model.max_candidates_per_pass=4", "model.dropout=0.0", "data.max_sequence=6",
]

# configs/transact/transact_v2_synthetic.yaml (lifelong S_all) shrunk: 40 users, two of them heavy.
TINY_TRANSACT_V2 = [
    "data.synthetic.num_users=40", "data.synthetic.num_items=200", "data.synthetic.mean_events_per_user=60",
    "data.synthetic.heavy_user_fraction=0.05", "data.synthetic.heavy_user_events=500", "data.synthetic.days=60",
    "data.num_workers=0", "data.lifelong.lifelong_k=16", "data.lifelong.realtime_recent=8",
    "data.lifelong.realtime_k=4", "data.lifelong.impression_k=4", "model.embedding_dim=8",
    "model.dense_arch_layers=[16, 8]", "model.cross_layers=1", "model.over_arch_layers=[16]",
    "model.transact_v2.max_sequence=32", "model.transact_v2.model_dim=16", "model.transact_v2.feedforward_dim=16",
]

# configs/mimn/synthetic.yaml shrunk, with sequences long enough to hold a user's whole history (as a UIC state does).
TINY_MIMN = [
    "data.synthetic.num_users=60", "data.synthetic.num_items=300", "data.synthetic.mean_events_per_user=30",
    "data.synthetic.heavy_user_fraction=0.0", "data.num_workers=0", "data.max_sequence=150", "model.embedding_dim=8",
    "model.memory_slots=3", "model.memory_dim=6", "model.controller_dim=5", "model.induction_dim=4",
    "model.over_arch_layers=[8]",
]


def _train(config: str, out, overrides: list[str]):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", config, *overrides, *TINY_TRAINER, "train.epochs=1", f"output_dir={out}"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def dlrm_run(tmp_path_factory):
    return _train("configs/dlrm/synthetic.yaml", tmp_path_factory.mktemp("serve-dlrm"), TINY_SYNTHETIC_DLRM)


@pytest.fixture(scope="session")
def hstu_ranking_run(tmp_path_factory):
    return _train("configs/hstu/synthetic_ranking.yaml", tmp_path_factory.mktemp("serve-hstu-ranking"), TINY_HSTU_RANKING)


@pytest.fixture(scope="session")
def hstu_run(tmp_path_factory):
    from recsys.train.retrieval import RetrievalRecipe
    from tests.recsys.train.test_retrieval_recipe import retrieval_config, write_walks

    root = tmp_path_factory.mktemp("serve-hstu")
    recipe = RetrievalRecipe(retrieval_config(root / "run", "hstu", write_walks(root / "walks.csv"), "train.epochs=1"))
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    return root / "run"


@pytest.fixture(scope="session")
def transact_v2_run(tmp_path_factory):
    return _train("configs/transact/transact_v2_synthetic.yaml", tmp_path_factory.mktemp("serve-transact-v2"),
                  TINY_TRANSACT_V2)


@pytest.fixture(scope="session")
def mimn_run(tmp_path_factory):
    return _train("configs/mimn/synthetic.yaml", tmp_path_factory.mktemp("serve-mimn"), TINY_MIMN)
