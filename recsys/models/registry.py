"""The model zoo: every model registers a :class:`ModelSpec`; ``get_model`` builds one by name.

Example::

    from recsys.models import get_model, list_models
    list_models("dlrm*")                        # ["dlrm"]
    model = get_model("dlrm", embedding_dim=64)  # keyword overrides map onto DLRMConfig
    model = get_model("dlrm", feature_spec=FeatureSpec.from_log(log), device="meta")
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError
from recsys.models.din import DINConfig, build_din
from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.models.emb_mlp import EmbeddingMLPConfig, build_emb_mlp
from recsys.models.gru4rec import GRU4RecConfig, build_gru4rec
from recsys.models.hstu_ranking import HSTURanking, HSTURankingConfig
from recsys.models.hstu import HSTURetrievalConfig, build_hstu_retrieval
from recsys.models.mimn import MIMNConfig, build_mimn
from recsys.models.pinnability import (
    BSTRankerConfig,
    Pinnability,
    PinnabilityConfig,
    TransActV1RankerConfig,
    TransActV2RankerConfig,
)
from recsys.models.sasrec import SASRecRetrievalConfig, build_sasrec_retrieval


@dataclass(frozen=True)
class ModelSpec:
    """How to build one zoo model.

    Args:
        name: registry key, e.g. ``"dlrm"``.
        config_cls: the model's config dataclass; keyword overrides map onto its fields.
        build: ``build(feature_spec, config, device) -> nn.Module``.
        description: one line for ``list_models`` listings and ``--help``.
        task: "ranking" (scores candidates from RankingBatches: ``recsys.train.ranking``) or
            "retrieval" (next item from SequenceBatches: ``recsys.train.retrieval``).
    """

    name: str
    config_cls: type
    build: Callable[[FeatureSpec, Any, torch.device | str | None], nn.Module]
    description: str
    task: str = "ranking"


_MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Adds a model to the zoo; a second, different spec under one name is a ConfigError."""
    if not dataclasses.is_dataclass(spec.config_cls):
        raise ConfigError(f"model {spec.name!r}: config_cls must be a dataclass, got {spec.config_cls!r}")
    existing = _MODELS.get(spec.name)
    if existing is not None and existing != spec:
        raise ConfigError(f"a model named {spec.name!r} is already registered; pick another name")
    _MODELS[spec.name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching the shell-style ``pattern``."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {list_models()}")
    return _MODELS[name]


def model_config(name: str, **overrides: Any) -> Any:
    """The model's config dataclass with ``overrides`` applied to its fields."""
    config_cls = get_model_spec(name).config_cls
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"model {name!r} has no config keys {unknown}; valid keys: {valid}")
    return config_cls(**overrides)


def default_feature_spec() -> FeatureSpec:
    """A small FeatureSpec (1,000 users, 10,000 items, one 32-value attribute) for trying models."""
    return FeatureSpec(num_users=1_000, num_items=10_000, item_attributes={"category": 32}, content_dim=32)


def get_model(
    name: str,
    feature_spec: FeatureSpec | None = None,
    device: torch.device | str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Builds a zoo model.

    Args:
        name: a name from :func:`list_models`.
        feature_spec: the data's features; None = :func:`default_feature_spec`.
        device: where the model (its embedding tables at least) is built; ``"meta"`` allocates nothing.
        **overrides: fields of the model's config dataclass.
    """
    spec = get_model_spec(name)
    config = model_config(name, **overrides)
    return spec.build(feature_spec or default_feature_spec(), config, device)


def _build_dlrm(feature_spec: FeatureSpec, config: DLRMConfig, device: torch.device | str | None) -> nn.Module:
    return DLRM(feature_spec, config, device=device)


register(
    ModelSpec(
        name="dlrm",
        config_cls=DLRMConfig,
        build=_build_dlrm,
        description="DLRM ranker: pooled id embeddings + dense MLP, DCNv2 full-rank cross, one logit per action head",
    )
)


def _build_pinnability(
    feature_spec: FeatureSpec, config: PinnabilityConfig, device: torch.device | str | None
) -> nn.Module:
    return Pinnability(feature_spec, config, device=device)


register(
    ModelSpec(
        name="pinnability",
        config_cls=PinnabilityConfig,
        build=_build_pinnability,
        description="Pinnability ranker: DLRM-DCNv2 with a pluggable user-sequence encoder (sequence_encoder: none, bst, transact_v1, transact_v2)",
    )
)


register(
    ModelSpec(
        name="transact_v1",
        config_cls=TransActV1RankerConfig,
        build=_build_pinnability,
        description="Pinnability + TransAct V1: transformer over the latest actions, early fusion, time-window mask",
    )
)


register(
    ModelSpec(
        name="transact_v2",
        config_cls=TransActV2RankerConfig,
        build=_build_pinnability,
        description="Pinnability + TransAct V2: causal transformer over the lifelong selection S_all (needs data.lifelong), "
        "next-action loss with impression negatives",
    )
)


register(
    ModelSpec(
        name="bst",
        config_cls=BSTRankerConfig,
        build=_build_pinnability,
        description="Pinnability + BST: one transformer layer over history item ids with the candidate as last token",
    )
)


register(
    ModelSpec(
        name="hstu",
        config_cls=HSTURetrievalConfig,
        build=build_hstu_retrieval,
        description="HSTU next-item retrieval on jagged sequences: relative-bias pointwise attention, sampled softmax",
        task="retrieval",
    )
)


def _build_hstu_ranking(
    feature_spec: FeatureSpec, config: HSTURankingConfig, device: torch.device | str | None
) -> nn.Module:
    return HSTURanking(feature_spec, config, device=device)


register(
    ModelSpec(
        name="hstu_ranking",
        config_cls=HSTURankingConfig,
        build=_build_hstu_ranking,
        description="HSTU ranker: interleaved (item, action) history tokens, candidate as target, one logit per action head",
    )
)


register(
    ModelSpec(
        name="sasrec",
        config_cls=SASRecRetrievalConfig,
        build=build_sasrec_retrieval,
        description="SASRec next-item retrieval baseline: causal self-attention + FFN, same data, loss and evaluation as hstu",
        task="retrieval",
    )
)


register(
    ModelSpec(
        name="mimn",
        config_cls=MIMNConfig,
        build=build_mimn,
        description="MIMN ranker: NTM user-interest memory (utilisation regularisation) + memory induction unit, "
        "target-attended readout; explicit per-user state (init_state / update / score)",
    )
)


register(
    ModelSpec(
        name="din",
        config_cls=DINConfig,
        build=build_din,
        description="DIN ranker: target attention of the candidate over the whole behaviour sequence (MIMN baseline)",
    )
)


register(
    ModelSpec(
        name="emb_mlp",
        config_cls=EmbeddingMLPConfig,
        build=build_emb_mlp,
        description="Embedding&MLP ranker: sum-pooled behaviour sequence + candidate into an MLP (MIMN baseline)",
    )
)


register(
    ModelSpec(
        name="gru4rec",
        config_cls=GRU4RecConfig,
        build=build_gru4rec,
        description="GRU4Rec-style ranker: a GRU over the behaviour sequence, last hidden state + candidate into an MLP (MIMN baseline)",
    )
)
