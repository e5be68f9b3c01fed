"""Plain values (parsed YAML or JSON, ``key=value`` text) into the typed fields of the configuration dataclasses.

Each value is read as the type of its field's default: ``"16,8"`` or ``[16, 8]`` is a tuple of ints for a tuple
field, ``"yes"`` is True for a bool field, ``"3e-4"`` a float for a float field; a schedule may be given as the list
``[beta_start, beta_end, steps]``. A key the dataclass does not have, or a value its type cannot hold, is an error
that names the key."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from .diffusion import ScheduleConfig
from .errors import ArgumentError, PaletteError


def from_plain(cls, data: dict[str, Any], where: str = ""):
    """The dataclass ``cls`` from the mapping ``data`` (``where``: the dotted key of ``data``, for errors); fields
    not in ``data`` keep their defaults."""
    if not isinstance(data, dict):
        raise PaletteError(f"config section {where or '(top)'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise PaletteError(f"unknown config key {where + key!r}; known keys: {', '.join(fields)}")
        kwargs[key] = _coerce(_prototype(cls, fields[key]), value, where + key)
    return cls(**kwargs)


def plain(value: Any) -> Any:
    """``value`` (from :func:`dataclasses.asdict`) with every tuple as a list: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def set_dotted(data: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` (``train.lr=3e-4``, ``model.attention_resolutions=16,8``) in the nested mapping
    ``data``, whose existing keys are the only ones allowed; the text is read as YAML, except for a text field."""
    if "=" not in item:
        raise PaletteError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            raise PaletteError(f"unknown config key {key!r} in override {item!r}")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise PaletteError(f"unknown config key {key!r} in override {item!r}")
    # a text field takes the text as it is: YAML would read "no" as false and "" as null
    node[parts[-1]] = text if isinstance(node[parts[-1]], str) else _scalar(text)


def _prototype(cls, f: dataclasses.Field) -> Any:
    """A value of the field's type: its default, or the type's zero for a required field."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return typing.get_type_hints(cls)[f.name]()


def _coerce(default: Any, value: Any, key: str) -> Any:
    """``value`` as the type of ``default`` (the field ``key``'s)."""
    if dataclasses.is_dataclass(default):
        if isinstance(value, (list, tuple)) and isinstance(default, ScheduleConfig):
            value = dict(zip(("beta_start", "beta_end", "steps"), value))
        return from_plain(type(default), value, key + ".")
    if isinstance(default, tuple):
        return _coerce_tuple(default, value, key)
    if value is None:
        return None
    if isinstance(default, bool):
        return _coerce_bool(value, key)
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ArgumentError(key, f"must be a {type(default).__name__}, got {value!r}") from None
    return value


def _coerce_tuple(default: tuple, value: Any, key: str) -> tuple:
    """A tuple field from a list, a single value or comma-separated text, each item as the default's first item."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    inner = default[0] if default else None
    return tuple(_coerce(inner, v, key) if inner is not None else _scalar(v) for v in value)


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
    if isinstance(value, bool):
        return value
    raise ArgumentError(key, f"must be true or false, got {value!r}")


def _scalar(text: Any) -> Any:
    return yaml.safe_load(text) if isinstance(text, str) else text
