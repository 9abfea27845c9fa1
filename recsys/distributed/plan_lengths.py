"""The sequence lengths a run's batches will have, for planning, without building its batches.

A dry run of a production config cannot generate 10^8 users; the *distribution* of history
lengths does not need them. For synthetic data a sample of users is drawn from the same generator
(same activity distribution, heavy users included); other sources are read as the recipe reads them.
From the events of each user:

- retrieval rows (leave-one-out): one sequence per user of its engaged events but the two held out,
  cut to the model's ``max_seq_len``;
- ranking rows: one row per event of the user, whose history holds the user's engaged events
  before it: spread evenly over ``0 .. engaged``, cut to ``data.max_sequence``;
- TransAct V2 (lifelong batches): S_all has at most ``lifelong_k + realtime_recent + realtime_k +
  impression_k`` tokens; the plan takes that maximum (a bound: users with short histories have fewer).

Example::

    lengths = plan_lengths(cfg, model_config)       # LengthDistribution
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys.distributed.sequence_lengths import LengthDistribution

SAMPLE_USERS = 400  # users drawn from a synthetic world to measure its length distribution
_ROWS_PER_USER = 32  # history lengths sampled per user for ranking rows


def _engaged_per_user(data_cfg, log=None) -> tuple[np.ndarray, np.ndarray]:
    """``(engaged, events)`` per user of ``log``, else of the run's data (a sample of users for
    synthetic data)."""
    from recsys.data.pipeline import load_events

    if log is None and data_cfg.source == "synthetic":
        from recsys.data.synthetic import generate

        sample = dataclasses.replace(data_cfg.synthetic, num_users=min(data_cfg.synthetic.num_users, SAMPLE_USERS),
                                     num_items=min(data_cfg.synthetic.num_items, 100_000))
        log = generate(sample)
    elif log is None:
        log = load_events(data_cfg)
    engaged = np.bincount(log.user_id[log.engaged()], minlength=log.num_users)
    events = np.bincount(log.user_id, minlength=log.num_users)
    return engaged, events


def retrieval_lengths(engaged: np.ndarray, max_seq_len: int) -> LengthDistribution:
    """Per-user training sequences: engaged events but the validation and test targets."""
    users = engaged[engaged >= 3]
    return LengthDistribution.from_lengths(np.maximum(users - 2, 1), cap=max_seq_len)


def ranking_lengths(engaged: np.ndarray, events: np.ndarray, max_sequence: int) -> LengthDistribution:
    """Per-row histories: a user's rows (one per event) see 0 .. engaged events before them."""
    samples = []
    weights = []
    for e, n in zip(engaged, events):
        if n:
            samples.append(np.linspace(0, e, _ROWS_PER_USER))
            weights.append(np.full(_ROWS_PER_USER, n / _ROWS_PER_USER))
    if not samples:
        return LengthDistribution.fixed(0)
    values, weights = np.concatenate(samples), np.concatenate(weights)
    order = np.argsort(values)
    cdf = np.cumsum(weights[order]) / weights.sum()  # rows weighted by the user's events
    quantiles = (np.arange(4096) + 0.5) / 4096
    picked = values[order][np.minimum(np.searchsorted(cdf, quantiles), len(values) - 1)]
    return LengthDistribution.from_lengths(np.floor(picked).astype(np.int64), cap=max_sequence)


def plan_lengths(cfg, model_config, log=None) -> LengthDistribution:
    """The per-row sequence lengths of run ``cfg`` (a TrainConfig) for ``model_config`` (the model's
    config or the model: a ``max_seq_len`` marks a retrieval model); ``log``: the run's events if
    already loaded."""
    lifelong = cfg.data.lifelong
    if lifelong.enabled:
        return LengthDistribution.fixed(
            lifelong.lifelong_k + lifelong.realtime_recent + lifelong.realtime_k + lifelong.impression_k
        )
    max_seq_len = getattr(model_config, "max_seq_len", None)
    if max_seq_len is None and cfg.data.max_sequence == 0:
        return LengthDistribution.fixed(0)
    engaged, events = _engaged_per_user(cfg.data, log)
    if max_seq_len is not None:  # a retrieval model
        return retrieval_lengths(engaged, min(max_seq_len, cfg.data.max_sequence or max_seq_len))
    return ranking_lengths(engaged, events, cfg.data.max_sequence)


def lifelong_rows(data_cfg) -> dict:
    """TransAct V2's next-action loss per row on lifelong batches: impression negatives and
    (token, next action) pairs of S_RT[:r]; empty without lifelong batches."""
    lifelong = data_cfg.lifelong
    if not lifelong.enabled:
        return {}
    return {"impressions_per_row": float(lifelong.impression_k),
            "next_action_pairs_per_row": float(max(lifelong.realtime_recent - 1, 0))}
