"""The configuration reference, generated from the schema: every key, its type, default and meaning
(`plm-ray config --reference`; the README's table is this output, and a test keeps them equal)."""

from __future__ import annotations

import dataclasses
import typing

from plm_ray.config.schema import Config


def _type_name(kind: typing.Any) -> str:
    if typing.get_origin(kind) is list:
        return f"list[{typing.get_args(kind)[0].__name__}]"
    return kind.__name__


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    return '`""`' if value == "" else f"`{value}`"


def reference() -> str:
    """A markdown table of every key."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            doc = f.metadata["doc"]
            rule = f.metadata.get("rule")
            if rule is not None and not rule.allowed.startswith("must be one of"):  # the meaning names the choices
                doc += f" ({rule.allowed.removeprefix('must be ').removeprefix('must ')})"
            lines.append(f"| `{section.name}.{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | {doc} |")
    return "\n".join(lines) + "\n"
