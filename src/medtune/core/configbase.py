"""Config dataclass helpers: build from nested dicts with clear errors, YAML round trip, overrides.

Every config in medtune is a dataclass whose fields carry a one-line docstring and whose
`__post_init__` validates values. `from_dict` rejects unknown keys (naming the known ones) and
values whose type is not the field's annotation (`check_type`: a boolean field takes only YAML
booleans, an integer field only integers, a `Literal[...]` field only its choices),
`to_dict` gives plain YAML/JSON-able data, and `apply_overrides` applies dotted command-line
overrides such as `train.max_epochs=5`.
"""

from __future__ import annotations

import dataclasses
import re
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


class _Mismatch(Exception):
    """A value that does not have the field's type (turned into one line by `check_type`)."""


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _choices(tp: Any) -> str:
    return ", ".join(str(a) for a in typing.get_args(tp))


def describe_type(tp: Any) -> str:
    """The type a config field expects, in words (`an integer`, `a list of 3 integers`...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    simple = {
        bool: "a boolean (true or false)",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        dict: "a mapping",
    }
    if tp in simple:
        return simple[tp]
    if origin is typing.Literal:
        return f"one of {_choices(tp)}"
    if _is_union(tp):
        return " or ".join(describe_type(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list [{', '.join(describe_type(a) for a in args)}]"
    if origin is dict or _is_dataclass_type(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return f"values among {_choices(tp)}"
    return _PLURAL.get(tp, f"values of type {describe_type(tp)}")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """`value` as field type `tp` (lists become tuples, integers floats), or `_Mismatch`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        for option in args:
            try:
                return _convert(option, value, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _Mismatch
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, where)
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise _Mismatch
        return tuple(_convert(t, v, where) for t, v in zip(items, value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is int and isinstance(value, bool):
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Mismatch
    return value


def check_type(tp: Any, value: Any, where: str) -> Any:
    """`value` checked against config field type `tp` and converted (lists to tuples, integers
    to floats); a mismatch raises one line naming `where`, the expected type and the value."""
    try:
        return _convert(tp, value, where)
    except _Mismatch:
        pass
    hint = ""
    sequence = typing.get_origin(tp) is tuple or any(
        typing.get_origin(a) is tuple for a in typing.get_args(tp)
    )
    if sequence and isinstance(value, str) and "," in value:
        hint = f" (write a YAML list, e.g. [{value.strip('()[] ')}])"
    raise MedtuneInputError(f"{where}: expected {describe_type(tp)}, found {value!r}{hint}")


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass `cls` from a (nested) dict; unknown keys and values of the wrong type
    (by the field's annotation: bool, int, float, str, Literal choices, tuples, unions, dicts,
    nested configs) raise naming `where`."""
    if data is not None and not isinstance(data, dict):
        raise MedtuneInputError(f"{where or cls.__name__}: expected a mapping, found {data!r}")
    data = dict(data or {})
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
        sub = f"{where}.{key}" if where else key
        kwargs[key] = check_type(hints.get(key, Any), value, sub)
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
