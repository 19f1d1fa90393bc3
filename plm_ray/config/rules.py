"""What a config value must be: small named rules that test a value and say what is allowed. Each
key of the schema carries its rule (schema.py); checks.py applies them and the rules between keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RESERVED = ("cache",)  # the store's own folders (config.CACHE)


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    allowed: str  # completes "config key 'x' = value: ..."


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f"must be >= {_num(low)}")


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"must be > {_num(low)}")


def below(high: float) -> Rule:
    return Rule(lambda v: v < high, f"must be < {_num(high)}")


def within(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Rule:
    def test(v: float) -> bool:
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    brackets = f"{'(' if open_low else '['}{_num(low)}, {_num(high)}{')' if open_high else ']'}"
    return Rule(test, f"must be in {brackets}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(str(c) for c in choices)}")


def each(rule: Rule, *, count: int = 0) -> Rule:
    """Every item of a non-empty list (of exactly `count` items if given)."""

    def test(values: list[Any]) -> bool:
        return bool(values) and (not count or len(values) == count) and all(rule.test(v) for v in values)

    size = f"{count} values" if count else "at least one value"
    return Rule(test, f"needs {size}, each {rule.allowed}")


def folder_name(optional: bool) -> Rule:
    """A name that becomes one folder of the store: it cannot climb out of it or take a reserved one."""

    def test(v: str) -> bool:
        return (optional and v == "") or (bool(NAME.fullmatch(v)) and v not in RESERVED)

    empty = " (empty: a timestamped name)" if optional else ""
    return Rule(
        test, f"must be a folder name: letters, digits, '.', '_', '-', not starting with '.', not 'cache'{empty}"
    )


def endpoint() -> Rule:
    return Rule(lambda v: v == "" or v.startswith(("http://", "https://")), "must start with http:// or https://")
