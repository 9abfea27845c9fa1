"""A small lifelong world, its offline (replicated) batches and the same rows as RankRequests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.examples import RankingExamples
from recsys.data.features import FeatureSpec
from recsys.data.lifelong import LifelongConfig, build_lifelong_sequences
from recsys.data.lifelong_store import LifelongStore
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.models import get_model
from recsys.ranking import RankRequest, UserSequence

# Short windows so that short histories exercise every part, K > S and empty sequences.
SMALL = LifelongConfig(lifelong_max=300, realtime_max=20, impression_max=30,
                       lifelong_k=12, realtime_recent=4, realtime_k=6, impression_k=8)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    config = SyntheticConfig(num_users=12, num_items=300, num_topics=6, heavy_user_fraction=0.25,
                             heavy_user_events=4000, mean_events_per_user=120, days=90, seed=3)
    log = generate(config)
    store = LifelongStore.from_log(log)
    rng = np.random.default_rng(0)
    first_events = np.unique(log.user_id, return_index=True)[1][:3]  # requests with an empty sequence
    targets = np.unique(np.concatenate([rng.choice(len(log), size=40, replace=False), first_events]))
    spec = FeatureSpec.from_log(log)
    examples = RankingExamples.build(log, targets, spec, negatives_per_target=15, seed=1)
    sequences = build_lifelong_sequences(examples, store, tmp_path_factory.mktemp("lifelong") / "s", SMALL)
    torch.manual_seed(0)
    model = get_model("transact_v2", feature_spec=spec, embedding_dim=8, dense_arch_layers=[16, 8],
                      over_arch_layers=[16], cross_layers=1,
                      transact_v2={"max_sequence": SMALL.sequence_length, "model_dim": 16, "feedforward_dim": 16,
                                   "dropout": 0.0}).eval()
    return {"log": log, "store": store, "spec": spec, "examples": examples, "sequences": sequences, "model": model}


def request_groups(examples: RankingExamples) -> list[np.ndarray]:
    """Rows of each request (same user and request time), in row order."""
    users = examples.log.user_id[examples.event]
    keys = np.stack([users, examples.request_time], axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return [np.flatnonzero(inverse.reshape(-1) == g) for g in range(inverse.max() + 1)]


def requests_from_rows(world, groups: list[np.ndarray]) -> list[RankRequest]:
    """One RankRequest per group of rows: the store's sequence, the rows' candidates and the
    request-level features of the group's offline batch."""
    examples, spec, store = world["examples"], world["spec"], world["store"]
    requests = []
    for rows in groups:
        batch = examples.collate(rows)
        first = rows[0]
        user, time = int(examples.log.user_id[examples.event[first]]), int(examples.request_time[first])
        features = batch.sparse_features.to_dict()
        history = {key: features[key].to_dense()[0].numpy() for key in spec.history_features}
        requests.append(RankRequest(
            user_id=user, request_time=time, sequence=UserSequence.from_store(store, user, time, SMALL),
            candidates=examples.item[rows], surface=int(features["surface"].values()[0]),
            context=batch.dense_features[0, spec.content_dim:].numpy(), history=history,
        ))
    return requests
