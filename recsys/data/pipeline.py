"""The shared data pipeline: source -> event log -> split -> ranking rows for train/valid/test.

Every ranking model of the zoo is trained and evaluated on the output of :func:`build_ranking_data`,
so they can be compared on the same rows::

    events (synthetic / MovieLens / Amazon / CSV)  ->  EventLog (one schema)
        -> Split (time or leave-one-out)             ->  RankingExamples per split
        -> ResumableBatchSampler + DataLoader        ->  RankingBatch (KJT + dense + labels)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.data.examples import RankingExamples
from recsys.data.features import FeatureSpec
from recsys.data.last_behavior import PROTOCOL as LAST_BEHAVIOR
from recsys.data.last_behavior import build_last_behavior_examples, last_behavior_targets
from recsys.data.schema import EventLog
from recsys.data.user_weights import user_weights as compute_user_weights
from recsys.data.splits import Split, leave_one_out, time_split
from recsys.errors import ConfigError, DataError


@dataclass
class RankingData:
    """Everything a ranking recipe needs from the data side.

    ``event_probabilities``: ``[N, A]`` float64 exact probability of each action of each event of
    ``log`` (the synthetic generator's, with slot, session and clicks); None for other sources.
    """

    log: EventLog
    split: Split
    spec: FeatureSpec
    train: RankingExamples
    valid: RankingExamples
    test: RankingExamples
    event_probabilities: np.ndarray | None = None

    def examples(self, split: str) -> RankingExamples:
        return {"train": self.train, "valid": self.valid, "test": self.test}[split]


def load_events(data_cfg) -> EventLog:
    """Reads the configured source into an :class:`EventLog`."""
    if data_cfg.source == "synthetic":
        from recsys.data.synthetic import generate

        return generate(data_cfg.synthetic)
    if not data_cfg.path:
        raise ConfigError(f"data.path is required for data.source={data_cfg.source!r}; set data.path=<file or folder>")
    from recsys.data.readers import read_events

    if data_cfg.path.startswith("dataset:"):  # a named set in the cache folder (recsys.data.datasets)
        from recsys.data.datasets import dataset_path

        path = dataset_path(data_cfg.path, fetch=data_cfg.download)
    else:
        path = Path(data_cfg.path)
        if data_cfg.download:
            path = fetch_source(data_cfg.source, path)
    return read_events(data_cfg.source, path, **data_cfg.options)


def load_events_with_probabilities(data_cfg) -> tuple[EventLog, np.ndarray | None]:
    """:func:`load_events`, plus for the synthetic source the ``[N, A]`` exact probability each
    event's actions were drawn with (None for the other sources)."""
    if data_cfg.source == "synthetic":
        from recsys.data.synthetic import generate_with_probabilities

        shard = generate_with_probabilities(data_cfg.synthetic)
        return shard.log, shard.probabilities
    return load_events(data_cfg), None


def fetch_source(source: str, path: Path) -> Path:
    """Downloads the data of ``source`` to ``path`` when it is not there yet; returns the path to read."""
    from recsys.data.download import fetch_amazon_ratings, fetch_movielens

    if source == "movielens":
        return fetch_movielens(path.name, path.parent)
    if source == "amazon_ratings":
        return fetch_amazon_ratings(path)
    raise ConfigError(f"data.download works for sources movielens and amazon_ratings only, not {source!r}; "
                      f"set data.download=false")


def split_events(log: EventLog, data_cfg) -> Split:
    if data_cfg.split == "leave_one_out":
        return leave_one_out(log)
    return time_split(log, valid_fraction=data_cfg.valid_fraction, test_fraction=data_cfg.test_fraction)


def build_ranking_data(data_cfg, seed: int, user_weights: np.ndarray | None = None, log: EventLog | None = None,
                       event_probabilities: np.ndarray | None = None) -> RankingData:
    """Builds train/valid/test rows from ``data_cfg`` (a :class:`~recsys.train.config.DataConfig`).

    Args:
        data_cfg: the data section of the run's config.
        seed: seeds negative sampling (train, valid and test use seed, seed+1, seed+2).
        user_weights: ``[num_users]`` per-user loss weights; None = ``data_cfg.user_weights``
            (:mod:`recsys.data.user_weights`, activity counted on the training events), or ones
            when the config has no such section.
        log: an already loaded log (skips :func:`load_events`).
        event_probabilities: ``[N, A]`` exact action probabilities of ``log``'s events (synthetic).

    ``data.protocol: last_behavior`` builds the MIMN paper's rows instead (each user's last
    behaviour vs sampled negatives, :mod:`recsys.data.last_behavior`); ``data.split``, the
    fractions, ``negatives_per_target`` and ``train_rows`` are then unused.
    """
    log = load_events(data_cfg) if log is None else log
    if event_probabilities is not None and event_probabilities.shape != (len(log), log.num_actions):
        raise DataError(f"event_probabilities must have shape [{len(log)}, {log.num_actions}] (events x actions of "
                        f"the log), got {event_probabilities.shape}; pass the probabilities generated with this log")
    spec = FeatureSpec.from_log(log, max_history=data_cfg.max_history, max_sequence=data_cfg.max_sequence)
    if getattr(data_cfg, "protocol", "events") == LAST_BEHAVIOR:
        return _last_behavior_data(log, spec, data_cfg, seed, user_weights, event_probabilities)
    split = split_events(log, data_cfg)
    if user_weights is None and getattr(data_cfg, "user_weights", None) is not None:
        user_weights = compute_user_weights(log, data_cfg.user_weights, events=split.train)
    train_targets = split.train
    if data_cfg.train_rows == "engaged":
        train_targets = train_targets[log.engaged()[train_targets]]

    def rows(targets: np.ndarray, negatives: int, offset: int) -> RankingExamples:
        return RankingExamples.build(
            log, targets, spec, negatives_per_target=negatives, seed=seed + offset, user_weights=user_weights
        )

    return RankingData(
        log=log,
        split=split,
        spec=spec,
        train=rows(train_targets, data_cfg.negatives_per_target, 0),
        valid=rows(split.valid, data_cfg.eval_negatives_per_target, 1),
        test=rows(split.test, data_cfg.eval_negatives_per_target, 2),
        event_probabilities=event_probabilities,
    )


def _last_behavior_data(log: EventLog, spec: FeatureSpec, data_cfg, seed: int, user_weights: np.ndarray | None,
                        event_probabilities: np.ndarray | None) -> RankingData:
    """:func:`build_ranking_data` under ``data.protocol: last_behavior``."""
    if user_weights is None and getattr(data_cfg, "user_weights", None) is not None:
        split = last_behavior_targets(log, data_cfg.last_behavior).split
        user_weights = compute_user_weights(log, data_cfg.user_weights, events=split.train)
    targets, rows = build_last_behavior_examples(log, spec, data_cfg.last_behavior, seed, user_weights)
    return RankingData(log=log, split=targets.split, spec=spec, train=rows["train"], valid=rows["valid"],
                       test=rows["test"], event_probabilities=event_probabilities)
