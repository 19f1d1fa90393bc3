"""The checks a configuration passes before anything starts: every key's own rule (schema.py), then
the rules between keys. Each refusal is one line naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
from typing import Any

from plm_ray.config.errors import ConfigError
from plm_ray.config.schema import PRESETS, Config


def refuse(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key '{key}' = {value!r}: {allowed}")


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise refuse(key, value, allowed)


def check_keys(cfg: Config) -> None:
    """Every key against its rule, in the schema's order."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            rule = f.metadata.get("rule")
            value = getattr(values, f.name)
            if rule is not None and not rule.test(value):
                raise refuse(f"{section.name}.{f.name}", value, rule.allowed)


def model_shape(cfg: Config) -> tuple[int, int, int, int]:
    """(layers, hidden, heads, intermediate) after the preset and the explicit sizes."""
    m = cfg.model
    layers, hidden, heads, inter = PRESETS[m.preset]
    return m.num_layers or layers, m.hidden_size or hidden, m.num_heads or heads, m.intermediate_size or inter


def check_between_keys(cfg: Config) -> None:
    d, p, s, m, k = cfg.data, cfg.pretrain, cfg.sweep, cfg.model, cfg.masking
    _, hidden, heads, inter = model_shape(cfg)
    _check(hidden % heads == 0, "model.num_heads", heads, f"must divide the hidden size {hidden}")
    if m.arch == "xlm":
        _check(inter == 4 * hidden, "model.intermediate_size", inter, f"arch xlm needs 4 x hidden_size = {4 * hidden}")
    if m.max_positions:
        _check(
            d.block_size <= m.max_positions,
            "data.block_size",
            d.block_size,
            f"is larger than model.max_positions = {m.max_positions}",
        )
    _check(
        k.mask_fraction + k.random_fraction <= 1,
        "masking.random_fraction",
        k.random_fraction,
        f"mask_fraction + random_fraction must be <= 1 (mask_fraction = {k.mask_fraction})",
    )
    _check(p.max_steps > 0 or p.epochs > 0, "pretrain.epochs", p.epochs, "must be >= 1 when pretrain.max_steps is 0")
    if p.offload:
        _check(p.zero_stage != 0, "pretrain.zero_stage", p.zero_stage, "offload needs a ZeRO stage (1-3, or -1)")
    _check(s.lr_min < s.lr_max, "sweep.lr_min", s.lr_min, f"must be below sweep.lr_max = {s.lr_max}")
    if s.gpus_per_trial > 1:
        _check(
            s.gpus_per_trial == int(s.gpus_per_trial),
            "sweep.gpus_per_trial",
            s.gpus_per_trial,
            "above 1 must be a whole number",
        )
    _check(
        s.grace_period <= max(s.epochs),
        "sweep.grace_period",
        s.grace_period,
        f"must be <= the most epochs, {max(s.epochs)}",
    )
    if s.scheduler == "pbt":
        _check(
            s.search in ("grid", "random"),
            "sweep.search",
            s.search,
            "pbt mutates the trials itself: use grid or random",
        )


def validate(cfg: Config) -> None:
    check_keys(cfg)
    check_between_keys(cfg)
