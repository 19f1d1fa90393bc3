"""Typed configuration: one dataclass section per pipeline stage (schema.py), read from YAML files
and `--set` overrides (load.py) and checked before any work starts (checks.py)."""

from plm_ray.config.errors import CACHE, ConfigError
from plm_ray.config.load import from_dict, load_config, parse_set
from plm_ray.config.schema import (
    PRECISIONS,
    PRESETS,
    Config,
    DataSection,
    MaskingSection,
    ModelSection,
    OptimizerSection,
    PretrainSection,
    RunSection,
    StoreSection,
    SweepSection,
    TokenizerSection,
    TrackingSection,
    resolve_zero_stage,
)

__all__ = [
    "CACHE",
    "PRECISIONS",
    "PRESETS",
    "Config",
    "ConfigError",
    "DataSection",
    "MaskingSection",
    "ModelSection",
    "OptimizerSection",
    "PretrainSection",
    "RunSection",
    "StoreSection",
    "SweepSection",
    "TokenizerSection",
    "TrackingSection",
    "from_dict",
    "load_config",
    "parse_set",
    "resolve_zero_stage",
]
