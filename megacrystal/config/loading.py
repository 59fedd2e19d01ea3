"""Building a `Config`: YAML file, then `dotted.key=value` overrides, each value checked against its
field's type; `./` paths in the file made relative to it."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Union

from .schema import Config, ConfigError, where
from .validation import validate_config


def coerce(value: Any, tp: Any, path: str, origin: str | None) -> Any:
    """Check/convert `value` against the annotation `tp`; raise ConfigError naming `path`."""
    o = typing.get_origin(tp)
    args = typing.get_args(tp)
    if o in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, path, origin)
            except ConfigError as e:  # report the alternative of the value's shape (a mapping: the dataclass)
                errors.append((dataclasses.is_dataclass(a) != isinstance(value, dict), str(e)))
        errors.sort(key=lambda x: x[0])
        raise ConfigError(errors[0][1] if errors else where(origin, f"{path}: bad value {value!r}"))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(where(origin, f"{path}: expected a mapping, got {type(value).__name__}"))
        return _build(tp, value, path, origin)
    if o is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where(origin, f"{path}: expected a list, got {value!r}"))
        return [coerce(v, args[0], f"{path}[{i}]", origin) for i, v in enumerate(value)]
    if o is dict:
        if not isinstance(value, dict):
            raise ConfigError(where(origin, f"{path}: expected a mapping, got {value!r}"))
        return {str(k): coerce(v, args[1], f"{path}.{k}", origin) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where(origin, f"{path}: expected true/false, got {value!r}"))
    if tp is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(where(origin, f"{path}: expected an integer, got {value!r}"))
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(where(origin, f"{path}: expected a number, got {value!r}")) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where(origin, f"{path}: expected a number, got {value!r}"))
        if not math.isfinite(float(value)):
            raise ConfigError(where(origin, f"{path}: expected a finite number, got {value!r}"))
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off as booleans (model.grad_accum_fusion: off)
            value = "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(where(origin, f"{path}: expected a string, got {value!r}"))
        return value
    raise ConfigError(where(origin, f"{path}: unsupported type {tp}"))


def _build(cls, data: dict, path: str, origin: str | None):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source_file"}
    kwargs = {}
    for k, v in data.items():
        p = f"{path}.{k}" if path else str(k)
        if k not in names:
            raise ConfigError(where(origin, f"unknown field {p!r} (expected one of {sorted(names)})"))
        kwargs[k] = coerce(v, hints[k], p, origin)
    return cls(**kwargs)


def from_dict(data: dict, origin: str | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(where(origin, f"expected a mapping at the top level, got {type(data).__name__}"))
    cfg = _build(Config, data, "", origin)
    cfg.source_file = origin
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set `a.b.c=value` entries on a nested dict (values parsed as YAML scalars)."""
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"override {text!r}: {'.'.join(parts[: i + 1])} is not an index of a list of {len(node)}"
                    )
                node = node[int(part)]
                continue
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {text!r}: {last!r} is not an index of a list of {len(node)}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def read_yaml_mapping(path: Path, what: str = "config") -> dict:
    """The YAML file at `path`, which must hold a mapping; one-line ConfigErrors otherwise."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(path: str | None = None, overrides: list[str] | None = None, validate: bool = True) -> Config:
    """Read YAML at `path` (or start from defaults), apply overrides, resolve and validate."""

    data: dict = {}
    origin = None
    if path is not None:
        origin = str(path)
        p = Path(path)
        data = read_yaml_mapping(p)
        _resolve_relative_paths(data, p.parent)
    data = apply_overrides(data, list(overrides or []))
    cfg = from_dict(data, origin)
    cfg.model = cfg.model.resolve()
    if validate:
        validate_config(cfg)
    return cfg


def _resolve_relative_paths(data: dict, base: Path) -> None:
    """Paths in a config file that start with ./ or ../ are relative to that file."""

    def fix(p):
        return str((base / p).resolve()) if isinstance(p, str) and p.startswith(("./", "../")) else p

    d = data.get("data")
    if not isinstance(d, dict):
        return
    if "tokenizer_model" in d:
        d["tokenizer_model"] = fix(d["tokenizer_model"])
    for src in (d.get("sources") or {}).values():
        if isinstance(src, dict) and isinstance(src.get("prefixes"), list):
            src["prefixes"] = [fix(p) for p in src["prefixes"]]
