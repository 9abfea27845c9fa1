"""One real training step of any zoo model on synthetic data, with the Workload that describes it.

The dense estimate (:mod:`recsys.distributed.dense_estimate`) is checked against what a real step
does: the bytes autograd saves (tests, on CPU) and the peak memory and time of a step
(``benchmarks/plan_vs_measured.py``, on a GPU). :func:`probe_case` builds the model (unsharded,
on ``device``), one batch of ``batch_size`` rows from the built-in synthetic feed with sequences of
at most ``max_len`` events (the same data pipeline as the recipes), the loss of a training step,
and the :class:`~recsys.distributed.dense_estimate.Workload` of that very batch (its real jagged
lengths, its impressions and next-action pairs).

Example::

    case = probe_case("hstu", batch_size=16, max_len=20, embedding_dim=16)
    loss = case.step()
    estimate = estimate_dense(case.model, case.work)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from recsys.data.synthetic import SyntheticConfig
from recsys.distributed.dense_estimate import Workload
from recsys.distributed.sequence_lengths import LengthDistribution

SMALL_WORLD = SyntheticConfig(num_users=60, num_items=300, mean_events_per_user=80, heavy_user_fraction=0.1,
                              heavy_user_events=600)


@dataclass
class ProbeCase:
    """A model, its training-step closure on one batch, and the Workload of that batch."""

    name: str
    model: nn.Module
    step: Callable[[], torch.Tensor]
    work: Workload


@lru_cache(maxsize=8)
def _ranking_data(synthetic: SyntheticConfig, max_len: int, lifelong: bool, cache_dir: str):
    from recsys.data.lifelong_pipeline import LifelongDataConfig, prepare_lifelong_data
    from recsys.data.pipeline import build_ranking_data
    from recsys.train.config import DataConfig

    if lifelong:
        config = LifelongDataConfig(enabled=True, lifelong_k=max_len, realtime_max=16, impression_max=16,
                                    realtime_recent=8, realtime_k=8, impression_k=8)
        data_cfg = DataConfig(source="synthetic", synthetic=synthetic, lifelong=config)
        data = build_ranking_data(data_cfg, seed=0)
        return data, prepare_lifelong_data(data, config, cache_dir, report=lambda *a: None).collate(data.train), config
    data = build_ranking_data(DataConfig(source="synthetic", synthetic=synthetic, max_sequence=max_len), seed=0)
    return data, None, None


@lru_cache(maxsize=8)
def _sequence_data(synthetic: SyntheticConfig, max_len: int):
    from recsys.data.features import FeatureSpec
    from recsys.data.pipeline import load_events
    from recsys.data.sequences import SequenceExamples
    from recsys.data.splits import leave_one_out
    from recsys.train.config import DataConfig

    log = load_events(DataConfig(source="synthetic", synthetic=synthetic))
    spec = FeatureSpec.from_log(log, max_sequence=max_len)
    return spec, SequenceExamples.build(log, leave_one_out(log), "train", max_len)


@dataclass
class ProbeData:
    """One batch of a zoo model's data (on the CPU), the data's FeatureSpec, the Workload of the
    batch and the model overrides the batch needs (TransAct V2: S_all's length)."""

    spec: Any
    batch: Any
    work: Workload
    overrides: dict


def probe_data(
    name: str,
    batch_size: int,
    max_len: int,
    synthetic: SyntheticConfig = SMALL_WORLD,
    cache_dir: str = "runs/probe-lifelong",
    fused_attention: bool = False,
    accelerator: bool = False,
) -> ProbeData:
    """``batch_size`` rows of model ``name``'s input, histories up to ``max_len`` (see :func:`probe_case`);
    ``fused_attention`` / ``accelerator``: the Workload's (the step runs on CUDA)."""
    from recsys.data.loader import make_dataloader
    from recsys.data.sequences import make_sequence_dataloader
    from recsys.models import get_model_spec
    from recsys.models.pinnability import s_all_batch

    if get_model_spec(name).task == "retrieval":
        spec, rows = _sequence_data(synthetic, max_len)
        batch = next(iter(make_sequence_dataloader(rows, batch_size, shuffle=True, seed=0)))
        lengths = LengthDistribution.from_lengths(batch.lengths.numpy())
        work = Workload(batch.batch_size, lengths, num_items=spec.num_items, fused_attention=fused_attention,
                        accelerator=accelerator)
        return ProbeData(spec, batch, work, {"max_seq_len": max_len})
    lifelong = name == "transact_v2"
    data, collate, config = _ranking_data(synthetic, max_len, lifelong, cache_dir)
    batch = next(iter(make_dataloader(data.train, batch_size, shuffle=True, seed=0, collate=collate)))
    if lifelong:  # V2 reads S_all: the stored realtime history (V1 / BST's) is no part of its workload
        s_all = s_all_batch(batch)
        work = Workload(batch.batch_size, _history_lengths(s_all), fused_attention=fused_attention, accelerator=accelerator,
                        **_lifelong_counts(s_all, data.spec.action_vocab))
        return ProbeData(data.spec, batch, work, {"transact_v2": {"max_sequence": config.sequence_length}})
    work = Workload(batch.batch_size, _history_lengths(batch), fused_attention=fused_attention, accelerator=accelerator)
    return ProbeData(data.spec, batch, work, {})


def probe_case(
    name: str,
    batch_size: int,
    max_len: int,
    device: str | torch.device = "cpu",
    synthetic: SyntheticConfig = SMALL_WORLD,
    cache_dir: str = "runs/probe-lifelong",
    seed: int = 0,
    **overrides: Any,
) -> ProbeCase:
    """A training step of zoo model ``name`` on ``batch_size`` rows of histories up to ``max_len``.

    Args:
        name: a zoo model.
        batch_size: B.
        max_len: most events per history (``data.max_sequence``; TransAct V2: the lifelong NN
            selection size; retrieval: the model's ``max_seq_len``).
        device: where the model (unsharded) and batch live.
        synthetic: the synthetic world the batch comes from.
        cache_dir: TransAct V2's lifelong store.
        **overrides: model config fields.
    """
    from recsys.models import get_model

    device = torch.device(device)
    torch.manual_seed(seed)
    data = probe_data(name, batch_size, max_len, synthetic, cache_dir, fused_attention=device.type == "cuda",
                      accelerator=device.type != "cpu")
    model = with_loss(get_model(name, feature_spec=data.spec, **{**data.overrides, **overrides}), data.spec).to(device)
    batch = data.batch.to(device)
    return ProbeCase(name, model, lambda: training_loss(model, batch), data.work)


def with_loss(model: nn.Module, spec) -> nn.Module:
    """A ranking model inside its RankingTask (model + weighted cross-entropy); retrieval models
    compute their loss themselves."""
    from recsys.models.task import RankingTask
    from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy

    if not hasattr(model, "heads"):
        return model
    return RankingTask(model, WeightedCrossEntropy(list(model.heads), spec.action_vocab))


def training_loss(model: nn.Module, batch) -> torch.Tensor:
    """The scalar training loss of ``model`` (``with_loss``, possibly DMP-wrapped) on ``batch``."""
    out = model(batch)
    return out[0] if isinstance(out, tuple) else out


def _history_lengths(batch) -> LengthDistribution:
    if batch.sequence_features is None:
        return LengthDistribution.fixed(0)
    return LengthDistribution.from_lengths(batch.sequence_features["seq_item_id"].lengths().cpu().numpy())


def _lifelong_counts(batch, action_vocab, negative_actions=None) -> dict:
    """The next-action loss's work per row of an S_all batch (``s_all_batch``), as
    :class:`~recsys.models.pinnability.TransActV2Arch` forms it: impression negatives (distinct
    (user, item) impression tokens) and (token, next action) pairs (consecutive realtime-recent
    tokens of a row whose next action is a positive engagement, ``negative_actions`` excluded:
    the default :class:`~recsys.modules.next_action_loss.NextActionLossConfig`'s when None)."""
    from recsys.data.lifelong import SOURCE_IMPRESSION, SOURCE_REALTIME_RECENT
    from recsys.modules.next_action_loss import NextActionLossConfig, positive_engagement

    negative_actions = NextActionLossConfig().negative_actions if negative_actions is None else negative_actions
    features = batch.sequence_features.to_dict()
    values = features["seq_source"].values().cpu().numpy()
    lengths = features["seq_source"].lengths().cpu().numpy()
    positive = positive_engagement(features["seq_actions"].values().cpu(), action_vocab, negative_actions).numpy()
    rows = np.repeat(np.arange(len(lengths)), lengths)
    recent = values == SOURCE_REALTIME_RECENT
    pairs = int(np.sum(recent[1:] & recent[:-1] & (rows[1:] == rows[:-1]) & positive[1:]))
    users = np.repeat(batch.user_id.cpu().numpy(), lengths)
    items = features["seq_item_id"].values().cpu().numpy()
    impression = values == SOURCE_IMPRESSION
    distinct = len(set(zip(users[impression].tolist(), items[impression].tolist())))
    b = len(lengths)
    return {"impressions_per_row": distinct / b, "next_action_pairs_per_row": pairs / b}
