"""JSON round trip for (nested) dataclasses with a schema version."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return obj.item()
    return obj


def from_jsonable(cls: type[T], data: Any, where: str = "") -> T:
    """Build ``cls`` (a dataclass, possibly nested) from parsed JSON, checking required fields."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ValueError(f"{where or cls.__name__}: missing field {f.name!r}")
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where or cls.__name__}.{f.name}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_jsonable(tp, value, where)
    if origin is dict and args and dataclasses.is_dataclass(args[1]):
        return {k: from_jsonable(args[1], v, f"{where}[{k}]") for k, v in value.items()}
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [from_jsonable(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            if a is type(None) and value is None:
                return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(non_none[0], value, where)
    return value
