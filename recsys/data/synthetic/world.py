"""The item world: topics, content embeddings, Zipf popularity and item quality.

Every item has a main topic (and, sometimes, a second one). Its content embedding is the unit-norm
mix of its topics' centroids plus noise, so the embedding carries the interests a user can have.
Popularity follows Zipf's law over a random ranking of the items: ``p(rank) ~ rank ** -s``.
Quality is a per-item engagement offset, mildly correlated with popularity.

The world is global and small (``O(I * C)``); users are generated against it shard by shard.

Shape letters: I items, T topics, C content dimension, n sampled slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.schema import ItemTable
from recsys.data.synthetic.config import SyntheticConfig
from recsys.data.synthetic.seeding import world_rng


@dataclass
class ItemWorld:
    """Items and the samplers that pick them for feed slots.

    Args:
        topic_centroids: ``[T, C]`` float32 unit vectors, one per topic.
        item_topic: ``[I]`` int64 main topic of each item.
        item_second_topic: ``[I]`` int64 second topic, or ``T`` when the item has none.
        content_embedding: ``[I, C]`` float32 unit-norm content embedding.
        popularity: ``[I]`` float64 Zipf probabilities (sum to 1).
        quality: ``[I]`` float64 engagement logit offset of each item.
        topic_mass: ``[T]`` float64 popularity mass of each main topic (sums to 1).
    """

    topic_centroids: np.ndarray
    item_topic: np.ndarray
    item_second_topic: np.ndarray
    content_embedding: np.ndarray
    popularity: np.ndarray
    quality: np.ndarray
    topic_mass: np.ndarray

    def __post_init__(self) -> None:
        self._popularity_cdf = np.cumsum(self.popularity)
        self._build_topic_sampler()

    @property
    def num_items(self) -> int:
        return int(self.item_topic.shape[0])

    @property
    def num_topics(self) -> int:
        return int(self.topic_centroids.shape[0])

    def item_table(self) -> ItemTable:
        """The :class:`ItemTable` of the world: content embeddings, ``topic`` and ``second_topic``."""
        return ItemTable(
            content_embedding=self.content_embedding,
            attributes={"topic": self.item_topic, "second_topic": self.item_second_topic},
            attribute_cardinality={"topic": self.num_topics, "second_topic": self.num_topics + 1},
        )

    # ---------------------------------------------------------------- samplers
    def sample_popular(self, uniforms: np.ndarray) -> np.ndarray:
        """``[n]`` uniforms in [0, 1) -> ``[n]`` items drawn by global popularity."""
        index = np.searchsorted(self._popularity_cdf, uniforms * self._popularity_cdf[-1], side="right")
        return np.minimum(index, self.num_items - 1)

    def sample_in_topic(self, topics: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """``[n]`` topics and ``[n]`` uniforms -> ``[n]`` items of those main topics, by popularity."""
        index = np.searchsorted(self._topic_cdf, topics + uniforms, side="right")
        index = np.clip(index, self._topic_start[topics], self._topic_start[topics + 1] - 1)
        return self._topic_items[index]

    def sample_uniform(self, uniforms: np.ndarray) -> np.ndarray:
        """``[n]`` uniforms -> ``[n]`` items drawn uniformly (exploration)."""
        return np.minimum((uniforms * self.num_items).astype(np.int64), self.num_items - 1)

    def _build_topic_sampler(self) -> None:
        # Items grouped by topic; topic t's cumulative popularity is shifted into [t, t + 1].
        order = np.argsort(self.item_topic, kind="stable")
        counts = np.bincount(self.item_topic, minlength=self.num_topics)
        self._topic_items = order
        self._topic_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        mass = self.popularity[order]
        cumulative = np.cumsum(mass)
        segment_base = np.repeat(cumulative[self._topic_start[:-1]] - mass[self._topic_start[:-1]], counts)
        segment_mass = np.repeat(self.topic_mass, counts)
        self._topic_cdf = self.item_topic[order] + (cumulative - segment_base) / segment_mass


def build_item_world(config: SyntheticConfig) -> ItemWorld:
    """Draws the item world of ``config`` from the world stream of ``config.seed``."""
    rng = world_rng(config.seed)
    centroids = _unit(rng.standard_normal((config.num_topics, config.content_dim)))
    item_topic = _assign_topics(rng, config.num_items, config.num_topics)
    second = _second_topics(rng, item_topic, config.num_topics, config.second_topic_prob)
    embedding = _content_embeddings(rng, centroids, item_topic, second, config.embedding_noise)
    popularity = _zipf_popularity(rng, config.num_items, config.zipf_exponent)
    log_pop = np.log(popularity)
    quality = 0.4 * rng.standard_normal(config.num_items) + 0.25 * (log_pop - log_pop.mean()) / (log_pop.std() + 1e-12)
    topic_mass = np.bincount(item_topic, weights=popularity, minlength=config.num_topics)
    return ItemWorld(
        topic_centroids=centroids.astype(np.float32),
        item_topic=item_topic,
        item_second_topic=second,
        content_embedding=embedding.astype(np.float32),
        popularity=popularity,
        quality=quality,
        topic_mass=topic_mass / topic_mass.sum(),
    )


def _assign_topics(rng: np.random.Generator, num_items: int, num_topics: int) -> np.ndarray:
    """``[I]`` main topics with uneven topic sizes; every topic gets at least one item."""
    sizes = rng.dirichlet(np.full(num_topics, 2.0))
    topics = rng.choice(num_topics, size=num_items, p=sizes)
    topics[rng.permutation(num_items)[:num_topics]] = np.arange(num_topics)
    return topics.astype(np.int64)


def _second_topics(rng: np.random.Generator, item_topic: np.ndarray, num_topics: int, prob: float) -> np.ndarray:
    """``[I]`` second topic (different from the main one) or ``num_topics`` for none."""
    n = item_topic.shape[0]
    other = (item_topic + rng.integers(1, max(num_topics, 2), size=n)) % num_topics
    has_second = (rng.random(n) < prob) & (num_topics > 1)
    return np.where(has_second, other, num_topics).astype(np.int64)


def _content_embeddings(rng, centroids, item_topic, second, noise) -> np.ndarray:
    """``[I, C]`` unit-norm mix: main centroid + 0.3..0.7 x second centroid + isotropic noise."""
    num_items, dim = item_topic.shape[0], centroids.shape[1]
    mix = centroids[item_topic].astype(np.float64)
    has_second = second < centroids.shape[0]
    weight = rng.uniform(0.3, 0.7, size=num_items) * has_second
    mix += weight[:, None] * centroids[np.minimum(second, centroids.shape[0] - 1)]
    mix += noise / np.sqrt(dim) * rng.standard_normal((num_items, dim))
    return _unit(mix)


def _zipf_popularity(rng: np.random.Generator, num_items: int, exponent: float) -> np.ndarray:
    """``[I]`` probabilities ``~ rank ** -exponent`` over a random ranking of the items."""
    rank = rng.permutation(num_items) + 1
    weights = rank.astype(np.float64) ** -exponent
    return weights / weights.sum()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
