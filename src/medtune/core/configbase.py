"""Config dataclass helpers: build from nested dicts with clear errors, YAML round trip, overrides.

Every config in medtune is a dataclass whose fields carry a one-line docstring and whose
`__post_init__` validates values. `from_dict` rejects unknown keys (naming the known ones),
`to_dict` gives plain YAML/JSON-able data, and `apply_overrides` applies dotted command-line
overrides such as `train.max_epochs=5`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medtune.core.atomic import atomic_write_text
from medtune.core.errors import MedtuneInputError

C = TypeVar("C")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass `cls` from a (nested) dict; unknown keys raise naming `where`."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise MedtuneInputError(f"{where or cls.__name__}: expected a mapping, found {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MedtuneInputError(
            f"{where or cls.__name__}: unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        tp = _unwrap_optional(hints.get(key, Any))
        sub = f"{where}.{key}" if where else key
        if _is_dataclass_type(tp) and isinstance(value, dict):
            value = from_dict(tp, value, sub)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong call shape, e.g. a missing required field
        raise MedtuneInputError(f"{where or cls.__name__}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain dict/list/scalar form of a config (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        extra = getattr(obj, "_extra_dict", None)
        if callable(extra):
            out = {**extra(), **out}
        return out
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneInputError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MedtuneInputError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MedtuneInputError(
            f"config file {path}: expected a mapping at top level, found {type(data).__name__}"
        )
    return data


def parse_override_value(text: str) -> Any:
    """A command-line value parsed as YAML (`5` -> int, `false` -> bool, `[1,2]` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`train.max_epochs`) in a nested dict, creating sub-dicts as needed."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return out


def dump_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write YAML atomically (temporary file, then rename)."""
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
