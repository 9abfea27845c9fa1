import dataclasses

import pytest
import torch

import recsys.models as models
from recsys.errors import ConfigError
from recsys.models import DLRM, DLRMConfig, ModelSpec, get_model, get_model_spec, list_models, model_config, register
from recsys.models.registry import default_feature_spec


def test_list_models_with_patterns():
    assert "dlrm" in list_models()
    assert list_models("dl*") == ["dlrm"]
    assert list_models("hstu*") == [name for name in list_models() if name.startswith("hstu")]
    assert list_models("nothing*") == []


def test_get_model_out_of_the_box_and_with_overrides(spec, batch):
    model = get_model("dlrm")
    assert isinstance(model, DLRM)
    assert model.spec == default_feature_spec() and model.config == DLRMConfig()
    small = get_model("dlrm", feature_spec=spec, embedding_dim=8, dense_arch_layers=[16, 8], heads=["click"])
    assert small.config.embedding_dim == 8 and small.heads == ["click"]
    assert small.sparse_arch.embedding_bags["t_item_id"].weight.shape == (spec.num_items, 8)
    assert small(batch).shape == (4, 1)
    meta = get_model("dlrm", feature_spec=spec, device="meta")
    assert meta.sparse_arch.embedding_bags["t_user_id"].weight.is_meta


def test_unknown_keys_and_names_are_config_errors():
    with pytest.raises(ConfigError, match="valid keys: .*embedding_dim"):
        get_model("dlrm", embeding_dim=8)
    with pytest.raises(ConfigError, match="registered models: .*dlrm"):
        get_model("nope")
    with pytest.raises(ConfigError, match="embedding_dim"):
        model_config("dlrm", embedding_dim=-1)
    assert model_config("dlrm", cross_layers=1).cross_layers == 1
    spec = get_model_spec("dlrm")
    assert spec.config_cls is DLRMConfig and spec.description


def test_register_new_model_and_reject_name_clash(monkeypatch):
    monkeypatch.setattr(models.registry, "_MODELS", dict(models.registry._MODELS))

    @dataclasses.dataclass
    class TinyConfig:
        width: int = 3

    def build(feature_spec, config, device):
        return torch.nn.Linear(feature_spec.dense_dim, config.width, device=device)

    register(ModelSpec("tiny", TinyConfig, build, "a linear layer"))
    assert list_models("ti*") == ["tiny"]
    assert get_model("tiny", width=5).out_features == 5
    with pytest.raises(ConfigError, match="already registered"):
        register(ModelSpec("tiny", TinyConfig, lambda *a: None, "another"))
