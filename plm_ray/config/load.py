"""Reading a configuration: the defaults, then a YAML file, then each `--set`, then the checks.

Unknown keys and wrong types are refused with the dotted key named. A `--set` value is read as its
key's own type: `run.name=yes` is the name "yes", `store.root=~` the folder "~" (YAML alone would make
them a boolean and null); only list keys read their value as YAML (`sweep.batch_sizes=[16,32]`).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from plm_ray.config.checks import validate
from plm_ray.config.errors import ConfigError
from plm_ray.config.schema import Config

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class Text(str):
    """A value as written on the command line, still to be read as its key's type."""


def _from_text(key: str, text: str, kind: Any) -> Any:
    if kind is str:
        return str(text)
    if kind is bool:
        if text.strip().lower() in TRUE + FALSE:
            return text.strip().lower() in TRUE
        raise ConfigError(f"config key '{key}': expected true or false, got {str(text)!r}")
    try:
        return kind(text.strip())
    except ValueError:
        raise ConfigError(f"config key '{key}': expected {kind.__name__}, got {str(text)!r}") from None


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check `value` against the field's annotation; ints are accepted where floats are expected."""
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, Text):
            value = yaml.safe_load(value) if value.strip() else []
        if not isinstance(value, list):
            value = [value]
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if isinstance(value, Text):
        return _from_text(key, value, kind)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, (str, int, float)) and not isinstance(value, bool),
    }[kind]
    if not ok:
        hint = " (YAML reads yes/no/on/off as booleans and ~ as null: quote the value)" if kind is str else ""
        raise ConfigError(f"config key '{key}': expected {kind.__name__}, got {value!r}{hint}")
    return kind(value)


def _section_from(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown config key '{name}.{key}' (known: {', '.join(sorted(known))})")
    return cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()})


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str) -> None:
    sections = {f.name for f in dataclasses.fields(Config)}
    for section, values in extra.items():
        if section not in sections:
            raise ConfigError(f"unknown config section '{section}' in {where} (known: {', '.join(sorted(sections))})")
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' in {where} must be a mapping, got {values!r}")
        base.setdefault(section, {}).update(values)


def parse_set(item: str) -> tuple[str, str, Text]:
    """`pretrain.max_steps=20` -> ("pretrain", "max_steps", "20"), the value read later as the key's type."""
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must be section.key, got {key!r}")
    return parts[0], parts[1], Text(raw)


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then each `--set`, then the checks."""
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        _merge(raw, loaded, str(p))
    for item in sets:
        section, key, value = parse_set(item)
        _merge(raw, {section: {key: value}}, "--set")
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and check a Config from plain sections (as `Config.to_dict()` writes them)."""
    hints = typing.get_type_hints(Config)
    cfg = Config(**{name: _section_from(name, hints[name], values) for name, values in raw.items()})
    validate(cfg)
    return cfg
