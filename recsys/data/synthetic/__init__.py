"""Synthetic Pinterest-style feed data: the library's built-in default data set.

Items with Zipf popularity and topical content embeddings; users whose interests drift over two
years and whose activity is heavy-tailed; short sessions of feed pages on three surfaces; clicks,
saves, hides and long views drawn from a known engagement model. Users are generated shard by
shard, deterministically per ``(seed, user_id)``, and the true action probabilities are exposed
so model quality can be compared with the truth.

Example::

    from recsys.data.synthetic import SyntheticConfig, generate, iter_shards, SyntheticWorld

    log = generate(SyntheticConfig(num_users=200))
    for shard in iter_shards(SyntheticConfig(num_users=10**8, shard_users=1000)):
        ...  # one EventLog of 1,000 users at a time
"""

from recsys.data.synthetic.config import SyntheticConfig
from recsys.data.synthetic.engagement import EngagementModel
from recsys.data.synthetic.generator import (
    SyntheticShard,
    SyntheticWorld,
    generate,
    generate_with_probabilities,
    iter_shards,
)
from recsys.data.synthetic.users import UserProfile

__all__ = [
    "EngagementModel",
    "SyntheticConfig",
    "SyntheticShard",
    "SyntheticWorld",
    "UserProfile",
    "generate",
    "generate_with_probabilities",
    "iter_shards",
]
