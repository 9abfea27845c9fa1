"""The model zoo: rankers that read a RankingBatch, and the registry that builds them by name."""

from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.models.popularity import PopularityModel
from recsys.models.registry import (
    ModelSpec,
    default_feature_spec,
    get_model,
    get_model_spec,
    list_models,
    model_config,
    register,
)
from recsys.models.task import RankingTask

__all__ = [
    "DLRM",
    "DLRMConfig",
    "ModelSpec",
    "PopularityModel",
    "RankingTask",
    "default_feature_spec",
    "get_model",
    "get_model_spec",
    "list_models",
    "model_config",
    "register",
]
