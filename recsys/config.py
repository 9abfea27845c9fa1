"""YAML configs mapped 1:1 onto typed dataclasses, with ``key.sub=value`` overrides.

The dataclasses are the source of truth: a YAML file may only name fields they declare (an unknown
key is an error that lists the known ones), values are checked against the declared types, and
missing keys keep the dataclass defaults. Every YAML in ``configs/`` starts with a comment line
giving the exact command that runs it.

Example::

    cfg = load_config(TrainConfig, "configs/dlrm/synthetic.yaml", ["optim.dense.lr=0.01"])
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recsys.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict:
    """Reads a YAML mapping; an empty file is an empty mapping. A relative path that does not exist
    is looked up among the installed configs (``recsys.packaged_configs``)."""
    from recsys.packaged_configs import resolve_config

    path = resolve_config(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML, e.g. configs/dlrm/synthetic.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value or section.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key under {part!r}, which is not a section")
        node[parts[-1]] = value
    return tree


def merge(base: dict, update: dict) -> dict:
    """Deep merge: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Builds ``cls`` from a YAML file (optional) and ``key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    data = merge(data, parse_overrides(overrides or []))
    where = " + ".join(part for part in (str(path) if path else "", "command-line overrides" if overrides else "") if part)
    return from_dict(cls, data, where=where or "defaults")


def from_dict(cls: type[T], data: dict, where: str = "config", prefix: str = "") -> T:
    """Maps a nested dict onto dataclass ``cls``, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        moved = getattr(cls, "MOVED_KEYS", {})
        if key not in known and key in moved:
            raise ConfigError(f"{where}: key {name!r} is no longer read: {moved[key]}")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {name!r}{hint}; known keys here: {sorted(known)}")
        kwargs[key] = _coerce(hints[key], value, where, name)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts/lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(tp: Any, value: Any, where: str, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: {name!r} cannot be None")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {name!r} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where, prefix=f"{name}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {name!r} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, where, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name!r} must be a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(inner, v, where, f"{name}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-12" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    if tp in (int, float, str, bool):
        raise ConfigError(f"{where}: {name!r} must be {tp.__name__}, got {value!r}")
    return value
