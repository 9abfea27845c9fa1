"""Which features a batch carries, and how large each id space is.

A :class:`FeatureSpec` is derived from an :class:`~recsys.data.schema.EventLog` once and shared by
the batch builder (which KJT keys to emit, in which order) and the models (which embedding tables
to create, with how many rows). Keeping both sides on one spec is what keeps the KJT keys and the
tables in step.

Sparse feature keys, in KJT order::

    user_id, item_id, surface, item_<attribute> ..., history_<action> ...

Dense features, in column order: the candidate's content embedding (C columns), then
``CONTEXT_FEATURES`` (T columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.data.schema import DEFAULT_ACTIONS, DEFAULT_SURFACES, EventLog

CONTEXT_FEATURES: tuple[str, ...] = (
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
    "log1p_history_length",
    "log1p_seconds_since_last_engagement",
)


@dataclass
class FeatureSpec:
    """Feature names and id-space sizes for one data set.

    Args:
        num_users: rows of the user table.
        num_items: rows of the item table (also used by every ``history_<action>`` key).
        action_vocab: action names; one label column and one history key per action.
        surface_vocab: surface names.
        item_attributes: attribute name -> cardinality (one KJT key ``item_<name>`` each).
        content_dim: C, width of the candidate's content embedding in the dense features.
        max_history: at most this many most recent items per ``history_<action>`` key.
        max_sequence: at most this many most recent events in ``sequence_features``; 0 = none.
    """

    num_users: int
    num_items: int
    action_vocab: tuple[str, ...] = DEFAULT_ACTIONS
    surface_vocab: tuple[str, ...] = DEFAULT_SURFACES
    item_attributes: dict[str, int] = field(default_factory=dict)
    content_dim: int = 32
    max_history: int = 50
    max_sequence: int = 0

    @classmethod
    def from_log(cls, log: EventLog, max_history: int = 50, max_sequence: int = 0) -> "FeatureSpec":
        items = log.items
        return cls(
            num_users=log.num_users,
            num_items=log.num_items,
            action_vocab=tuple(log.action_vocab),
            surface_vocab=tuple(log.surface_vocab),
            item_attributes=dict(items.attribute_cardinality) if items is not None else {},
            content_dim=items.content_dim if items is not None else 0,
            max_history=max_history,
            max_sequence=max_sequence,
        )

    @property
    def num_actions(self) -> int:
        return len(self.action_vocab)

    @property
    def history_features(self) -> list[str]:
        return [f"history_{a}" for a in self.action_vocab]

    @property
    def attribute_features(self) -> list[str]:
        return [f"item_{name}" for name in self.item_attributes]

    @property
    def sparse_features(self) -> list[str]:
        """KJT keys of ``RankingBatch.sparse_features``, in order."""
        return ["user_id", "item_id", "surface", *self.attribute_features, *self.history_features]

    @property
    def sequence_features(self) -> list[str]:
        """KJT keys of ``RankingBatch.sequence_features`` (empty when ``max_sequence == 0``)."""
        if self.max_sequence <= 0:
            return []
        return ["seq_item_id", "seq_actions", "seq_surface", "seq_timestamp"]

    @property
    def dense_dim(self) -> int:
        """Width of ``RankingBatch.dense_features``: C + T."""
        return self.content_dim + len(CONTEXT_FEATURES)

    def cardinality(self, feature: str) -> int:
        """Number of distinct ids of a sparse feature (the rows its table needs)."""
        if feature == "user_id":
            return self.num_users
        if feature == "item_id" or feature in self.history_features:
            return self.num_items
        if feature == "surface":
            return len(self.surface_vocab)
        if feature in self.attribute_features:
            return self.item_attributes[feature[len("item_"):]]
        raise KeyError(f"unknown sparse feature {feature!r}; known: {self.sparse_features}")


FEATURE_SPEC_FILE = "feature_spec.json"
"""Name of the FeatureSpec file a training run writes beside its config.json (``recsys.load`` reads it)."""


def save_feature_spec(spec: FeatureSpec, path) -> None:
    """Writes ``spec`` as JSON (atomically)."""
    from recsys.atomic_files import write_json_atomic
    from recsys.config import to_dict

    write_json_atomic(path, to_dict(spec))


def load_feature_spec(path) -> FeatureSpec:
    """The FeatureSpec :func:`save_feature_spec` wrote to ``path``."""
    import json
    from pathlib import Path

    from recsys.config import from_dict

    return from_dict(FeatureSpec, json.loads(Path(path).read_text(encoding="utf-8")), where=str(path))
