"""Overrides that shrink ``configs/dlrm/synthetic.yaml`` to a test's size, shared by the tests that
train it: 120 synthetic users (~5,800 training rows), 8-wide embeddings, one crossing layer."""

TINY_SYNTHETIC_DLRM = [
    "data.synthetic.num_users=120",
    "data.synthetic.num_items=300",
    "data.synthetic.mean_events_per_user=60",
    "data.synthetic.heavy_user_fraction=0.0",
    "data.num_workers=0",
    "model.embedding_dim=8",
    "model.dense_arch_layers=[16, 8]",
    "model.over_arch_layers=[16]",
    "model.cross_layers=1",
]
