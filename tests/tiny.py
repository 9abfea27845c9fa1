"""Small configs and runs shared by the tests that train on the synthetic feed: 120 users
(~5,800 training rows) instead of thousands."""

from recsys.train.ranking import RankingRecipe

TINY_SYNTHETIC_DATA = [
    "data.synthetic.num_users=120",
    "data.synthetic.num_items=300",
    "data.synthetic.mean_events_per_user=60",
    "data.synthetic.heavy_user_fraction=0.0",
    "data.num_workers=0",
]
# A short training run of any ranking config: two epochs of 256-row batches, no baseline, no mid-run checkpoint.
TINY_TRAINER = [
    "train.batch_size=256",
    "train.eval_batch_size=4096",
    "train.epochs=2",
    "train.progress=false",
    "train.baseline=false",
    "train.log_every=5",
    "train.checkpoint_every=0",
]
# configs/dlrm/synthetic.yaml's model shrunk to 8-wide embeddings and one crossing layer.
TINY_SYNTHETIC_DLRM = [
    *TINY_SYNTHETIC_DATA,
    "model.embedding_dim=8",
    "model.dense_arch_layers=[16, 8]",
    "model.over_arch_layers=[16]",
    "model.cross_layers=1",
]


def train_and_evaluate(cfg, split: str = "test") -> dict:
    """Trains a ranking config with the recipe, then returns its per-head metrics on ``split``."""
    recipe = RankingRecipe(cfg)
    recipe.setup()
    try:
        recipe.train()
        return recipe.evaluate(split)
    finally:
        recipe.cleanup()
