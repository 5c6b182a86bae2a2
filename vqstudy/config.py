"""The helpers every typed config uses: YAML reading, the one merge, overrides, field docs.

Merge order, everywhere in vqstudy: dataclass defaults <- YAML file <- command-line overrides.
Each field's docstring (the string literal under it) is its ``--help`` text.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
from pathlib import Path
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

def check_literal(obj: Any, name: str) -> None:
    """Raise ValueError if field `name` of dataclass `obj` is not one of its Literal choices."""
    hint = get_type_hints(type(obj))[name]
    if get_origin(hint) is Literal and getattr(obj, name) not in get_args(hint):
        raise ValueError(
            f"{type(obj).__name__}.{name} ({getattr(obj, name)!r}) must be one of {list(get_args(hint))}"
        )


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (used as --help text)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass `cls` from a (YAML) dict, recursing into nested dataclass fields.

    Unknown keys raise ValueError naming the key, its place, and the allowed keys.
    """
    data = dict(data or {})
    where = where or cls.__name__
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `extra`, recursing into nested dicts (the YAML <- command-line merge)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Override(str):
    """A raw `--set` value: converted by the type of the field it lands on (see `load_config`)."""


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """['train.max_steps=10', 'name=x'] -> {'train': {'max_steps': Override('10')}, 'name': Override('x')}.

    Values stay raw until `load_config` converts each by its field's type, so `--set name=inf` stays a string.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set expects key.path=value, got {pair!r}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is given both a value and sub-keys")
        node[parts[-1]] = Override(raw)
    return out


def _yaml_value(raw: str) -> Any:
    """A YAML scalar/list/dict; also '1e-3', which YAML 1.1 reads as a string, as a float."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_text(hint: Any) -> bool:
    """True for `str`, `str | None` and Literals of strings: fields whose override stays the raw text."""
    if hint is str:
        return True
    origin = get_origin(hint)
    if origin is Literal:
        return all(isinstance(a, str) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return bool(args) and all(_is_text(a) for a in args)
    return False


def _convert(raw: Override, hint: Any) -> Any:
    if _is_text(hint) and raw.strip() not in ("null", "~", "None"):
        return str(raw)
    return _yaml_value(str(raw))


def resolve_overrides(cls: type | None, data: dict[str, Any], where: str = "--set") -> dict[str, Any]:
    """Check `--set` keys against dataclass `cls` (naming the override, not the YAML file) and convert
    each raw value by the type of its field. Keys under untyped (dict/Any) fields are YAML-parsed."""
    out: dict[str, Any] = {}
    hints = get_type_hints(cls) if cls is not None else {}
    if cls is not None:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            keys = ", ".join(f"{where}{'.' if where != '--set' else ' '}{k}" for k in unknown)
            raise ValueError(f"unknown override {keys}: {cls.__name__} has no such field; allowed: {sorted(names)}")
    for key, value in data.items():
        hint = hints.get(key, Any)
        label = f"{where} {key}" if where == "--set" else f"{where}.{key}"
        if isinstance(value, dict):
            out[key] = resolve_overrides(_dataclass_in(hint), value, label)
        elif isinstance(value, Override):
            out[key] = _convert(value, hint)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path | None, what: str) -> dict[str, Any]:
    """The mapping in a YAML file ({} for None); ValueError naming the file if it holds something else."""
    if path is None:
        return {}
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {what} fields, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> Any:
    """Dataclass `cls` from defaults <- `base` <- YAML file <- `overrides` (nested dicts)."""
    data = deep_merge(read_yaml(path, cls.__name__), resolve_overrides(cls, overrides or {}))
    if base is not None:
        data = deep_merge(base, data)
    return from_dict(cls, data, where=str(path) if path else cls.__name__)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type inside a hint like `X`, `X | None` or `Optional[X]`."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (nested dataclasses too), for JSON/YAML."""
    return dataclasses.asdict(obj)
