"""A recipe table's options as data: key, type, default, bounds and description (`adapt plugins NAME`)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic.fields import FieldInfo

from adapt.types import PluginInfo, Table

BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "min length", "max_length": "max length"}


def type_name(annotation: Any) -> str:
    """A type as a recipe author reads it: `int`, `"pfeiffer" | "houlsby"`, `list[str] | "all-linear"`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args if a is not type(None)) + (
            " | unset" if type(None) in args else ""
        )
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    return "unset" if value is None else json.dumps(value, default=str)


def _bounds(info: FieldInfo) -> str:
    found = []
    for item in info.metadata:
        for attr, sign in BOUNDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            found.append(f"matches {pattern}")
    return ", ".join(found)


def table_options(table: type[Table]) -> list[dict[str, str]]:
    """One row per key of `table`, in declaration order."""
    return [
        {
            "key": key,
            "type": type_name(info.annotation),
            "default": _default(info),
            "bounds": _bounds(info),
            "description": info.description or "",
        }
        for key, info in table.model_fields.items()
    ]


def table_location(name: str, info: PluginInfo) -> str:
    """Where the plugin's options go in a recipe."""
    return {"method": f"[methods.{name}]", "head": f'[task] with head = "{name}"'}.get(info.kind, f"[plugins.{name}]")
