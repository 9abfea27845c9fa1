from dataclasses import dataclass, field
from typing import Literal

import pytest

from recsys.config import load_config, parse_overrides, to_dict
from recsys.errors import ConfigError


@dataclass
class Inner:
    lr: float = 0.1
    name: Literal["adam", "sgd"] = "adam"


@dataclass
class Outer:
    steps: int = 10
    layers: list[int] = field(default_factory=lambda: [4, 2])
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=dict)
    path: str | None = None


def test_yaml_and_overrides_map_onto_dataclasses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# recsys train --config c.yaml\nsteps: 5\ninner:\n  lr: 1\n")
    cfg = load_config(Outer, path, ["inner.name=sgd", "layers=[8, 4, 2]", "extra.k=v"])
    assert cfg == Outer(steps=5, layers=[8, 4, 2], inner=Inner(lr=1.0, name="sgd"), extra={"k": "v"})
    assert isinstance(cfg.inner.lr, float)
    assert to_dict(cfg)["inner"] == {"lr": 1.0, "name": "sgd"}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["stepz=3"], "did you mean 'steps'"),
        (["inner.lrr=3"], "unknown key 'inner.lrr'"),
        (["steps=abc"], "'steps' must be int"),
        (["inner.name=adamw"], "must be one of ['adam', 'sgd']"),
        (["layers=3"], "must be a list"),
        (["steps"], "key=value"),
        (["steps=true"], "'steps' must be int"),
    ],
)
def test_bad_keys_and_values_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, overrides)
    assert fragment in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, scalar)


def test_parse_overrides_nests_and_parses_values():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]", "e="]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2], "e": ""}


def test_floats_written_without_a_dot_are_floats():
    assert load_config(Outer, None, ["inner.lr=1e-12"]).inner.lr == 1e-12


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"steps: 5\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(Outer, path)
