"""Typed configuration: one dataclass section per pipeline stage, YAML files plus `--set` overrides.

Every key a user can write is a dataclass field, so unknown keys and wrong types are caught before
any work starts, with the dotted key named in the error.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user-facing configuration or input problem; the CLI prints it as one line and exits 2."""


@dataclass
class RunSection:
    name: str = ""  # empty: a timestamped name is chosen
    seed: int = 0


@dataclass
class StoreSection:
    root: str = "./plm_store"  # local path or any pyarrow URI (s3://bucket/prefix, gs://...)
    endpoint: str = ""  # S3-compatible endpoint override, e.g. http://127.0.0.1:9000
    region: str = ""


@dataclass
class DataSection:
    corpus: str = "embedded"  # "embedded", a path/dir/glob/URI, or "hf:NAME"
    format: str = "auto"  # auto | text | jsonl | parquet | csv | tsv
    text_column: str = "text"  # for jsonl / parquet / csv
    documents: str = "line"  # text files: "line" (one per line) or "blank_line" (paragraph groups)
    hf_config: str = ""
    hf_split: str = "train"
    block_size: int = 64
    eval_fraction: float = 0.01
    eval_blocks: int = 256
    tokenize_batch_docs: int = 2048
    shuffle_buffer_blocks: int = 0  # local shuffle buffer in the workers; 0 keeps stream order


@dataclass
class TokenizerSection:
    path: str = ""  # HF name or local path; empty: train WordPiece on the corpus
    vocab_size: int = 8192
    sample_documents: int = 200_000
    min_frequency: int = 2
    lowercase: bool = True


@dataclass
class MaskingSection:
    probability: float = 0.15
    whole_word: bool = False
    mask_fraction: float = 0.8  # of the selected tokens: replaced by [MASK]
    random_fraction: float = 0.1  # replaced by a random token; the rest is kept


# (layers, hidden, heads, intermediate); tiny..small follow Turc et al. 2019, base/large follow BERT.
PRESETS = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


@dataclass
class ModelSection:
    arch: str = "bert"  # bert | roberta | xlm | convbert (model.py says how they differ)
    preset: str = "tiny"  # tiny | mini | small | medium | base | large
    init_from: str = ""  # existing MLM checkpoint (path, store URI or HF name) to continue from
    num_layers: int = 0  # 0: from the preset
    hidden_size: int = 0
    num_heads: int = 0
    intermediate_size: int = 0
    max_positions: int = 0  # 0: data.block_size
    dropout: float = -1.0  # < 0: the preset's 0.1
    attention: str = "auto"  # auto (GPU: sdpa where the model has it; CPU: eager, measured faster) | sdpa | eager


# auto | fp32 | bf16-mixed (autocast over fp32 weights) | bf16 (bf16 weights) | fp16 (hardware.py)
PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16", "fp16")


@dataclass
class PretrainSection:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_SPREAD (one worker per node) | STRICT_PACK
    zero_stage: int = -1  # < 0: auto, ZeRO-2 on several workers, 0 on one (nothing to partition there)
    offload: bool = False  # ZeRO optimizer-state offload to CPU (stages 1-3)
    precision: str = "auto"  # one of PRECISIONS
    batch_size: int = 32  # micro-batch per worker, in blocks
    grad_accum: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: str = "linear"  # linear | cosine
    max_steps: int = 1000  # optimizer steps; 0: run `epochs` epochs
    epochs: int = 1
    # > 0: minutes of training (from the first step, evaluations and checkpoints included); the LR
    # schedule follows time or steps, whichever is further along, and training ends at either limit
    budget_minutes: float = 0.0
    grad_clip: float = 1.0
    log_every_steps: int = 50
    eval_every_steps: int = 0  # 0: only at the end
    checkpoint_every_steps: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    max_failures: int = 0
    comm_timeout_s: int = 600  # collectives that hang longer raise instead of waiting forever
    compile: bool = False  # torch.compile the model through DeepSpeed (see BENCHMARKS.md before enabling)


@dataclass
class OptimizerSection:
    """AdamW for pre-training and every trial; learning rates and weight decay belong to each stage."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6


def resolve_zero_stage(requested: int, world: int, offload: bool) -> int:
    """-1 (auto): ZeRO-2 across several ranks. One rank has nothing to partition, and there stage 2's
    gradient buckets and partition copies cost 16-26 % of a step (BENCHMARKS.md), so stage 0, unless
    optimizer offload is on, which needs a ZeRO stage. An explicit stage is used as given."""
    if requested >= 0:
        return requested
    return 2 if world > 1 or offload else 0


@dataclass
class SweepSection:
    task: str = "embedded"  # labeled data: path/URI (csv/tsv/jsonl/parquet) or "hf:NAME"
    validation: str = ""  # path/URI, or split name for hf:; empty: hold out validation_fraction
    validation_fraction: float = 0.1
    format: str = "auto"
    text_column: str = "sentence"
    label_column: str = "label"
    label_map: bool = False  # map string labels to ids (sorted) and save the map with the model
    num_labels: int = 0  # 0: infer as max(label) + 1
    hf_config: str = ""
    name: str = "sweep"  # folder under the run; lets a baseline sweep sit beside the main one
    model: str = ""  # checkpoint to fine-tune; "": this run's pre-trained export; "random": no pre-training
    learning_rates: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    lr_space: str = "grid"  # grid (learning_rates) | loguniform (lr_min..lr_max, num_samples)
    lr_min: float = 1e-5
    lr_max: float = 1e-3
    num_samples: int = 4
    batch_sizes: list[int] = field(default_factory=lambda: [32])
    epochs: int = 3
    evals_per_epoch: int = 1  # validation + checkpoint points per epoch; the best one is kept
    max_length: int = 128
    dropout: float = -1.0  # < 0: the checkpoint's own (pre-training often runs without; fine-tuning wants ~0.1)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    zero_stage: int = 0
    precision: str = "auto"
    max_concurrent_trials: int = 2
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    store: StoreSection = field(default_factory=StoreSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    sweep: SweepSection = field(default_factory=SweepSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check `value` against the field's annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
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
        raise ConfigError(f"config key '{key}': expected {kind.__name__}, got {value!r}")
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


def parse_set(item: str) -> tuple[str, str, Any]:
    """`pretrain.max_steps=20` -> ("pretrain", "max_steps", 20); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must be section.key, got {key!r}")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return parts[0], parts[1], value


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then each `--set`, then validation."""
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        _merge(raw, loaded, str(p))
    for item in sets:
        section, key, value = parse_set(item)
        _merge(raw, {section: {key: value}}, "--set")
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from plain sections (as `Config.to_dict()` writes them)."""
    hints = typing.get_type_hints(Config)
    cfg = Config(**{name: _section_from(name, hints[name], values) for name, values in raw.items()})
    validate(cfg)
    return cfg


def _check(cond: bool, key: str, value: Any, need: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}' = {value!r}: {need}")


def validate(cfg: Config) -> None:
    d, p, s, m, k = cfg.data, cfg.pretrain, cfg.sweep, cfg.model, cfg.masking
    _check(
        d.format in ("auto", "text", "jsonl", "parquet", "csv", "tsv"),
        "data.format",
        d.format,
        "must be auto, text, jsonl, parquet, csv or tsv",
    )
    _check(d.documents in ("line", "blank_line"), "data.documents", d.documents, "must be line or blank_line")
    _check(d.block_size >= 8, "data.block_size", d.block_size, "must be at least 8")
    _check(0 < d.eval_fraction < 0.5, "data.eval_fraction", d.eval_fraction, "must be in (0, 0.5)")
    _check(cfg.tokenizer.vocab_size >= 64, "tokenizer.vocab_size", cfg.tokenizer.vocab_size, "must be >= 64")
    _check(0 < k.probability < 1, "masking.probability", k.probability, "must be in (0, 1)")
    _check(
        k.mask_fraction + k.random_fraction <= 1 and min(k.mask_fraction, k.random_fraction) >= 0,
        "masking.mask_fraction",
        k.mask_fraction,
        "mask_fraction + random_fraction must lie in [0, 1]",
    )
    from plm_ray.model.archs import ARCHS

    _check(m.arch in ARCHS, "model.arch", m.arch, f"must be one of {', '.join(ARCHS)}")
    _check(m.attention in ("auto", "sdpa", "eager"), "model.attention", m.attention, "must be auto, sdpa or eager")

    _check(m.preset in PRESETS, "model.preset", m.preset, f"must be one of {', '.join(PRESETS)}")
    if m.max_positions:
        _check(
            d.block_size <= m.max_positions,
            "data.block_size",
            d.block_size,
            f"is larger than model.max_positions = {m.max_positions}",
        )
    _check(p.num_workers >= 1, "pretrain.num_workers", p.num_workers, "must be >= 1")
    _check(
        p.placement_strategy in ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"),
        "pretrain.placement_strategy",
        p.placement_strategy,
        "must be PACK, SPREAD, STRICT_SPREAD or STRICT_PACK",
    )
    _check(p.zero_stage in (-1, 0, 1, 2, 3), "pretrain.zero_stage", p.zero_stage, "must be -1 (auto), 0, 1, 2 or 3")
    _check(s.zero_stage in (0, 1, 2, 3), "sweep.zero_stage", s.zero_stage, "ZeRO stage must be 0, 1, 2 or 3")
    for key, value in (("pretrain.precision", p.precision), ("sweep.precision", s.precision)):
        _check(value in PRECISIONS, key, value, f"must be one of {', '.join(PRECISIONS)}")
    _check(p.learning_rate > 0, "pretrain.learning_rate", p.learning_rate, "learning rate must be > 0")
    _check(p.schedule in ("linear", "cosine"), "pretrain.schedule", p.schedule, "must be linear or cosine")
    _check(
        p.batch_size >= 1 and p.grad_accum >= 1,
        "pretrain.batch_size",
        p.batch_size,
        "batch and accumulation must be >= 1",
    )
    _check(p.max_steps > 0 or p.epochs > 0, "pretrain.max_steps", p.max_steps, "set max_steps or epochs > 0")
    _check(p.budget_minutes >= 0, "pretrain.budget_minutes", p.budget_minutes, "must be >= 0 (0: no time limit)")
    _check(p.max_failures >= 0, "pretrain.max_failures", p.max_failures, "must be >= 0")
    _check(p.keep_checkpoints >= 1, "pretrain.keep_checkpoints", p.keep_checkpoints, "must be >= 1")
    _check(s.lr_space in ("grid", "loguniform"), "sweep.lr_space", s.lr_space, "must be grid or loguniform")
    if s.lr_space == "grid":
        _check(len(s.learning_rates) >= 1, "sweep.learning_rates", s.learning_rates, "needs at least one value")
    for lr in [*s.learning_rates, s.lr_min, s.lr_max]:
        _check(lr > 0, "sweep.learning_rates", lr, "learning rate must be > 0")
    _check(s.lr_min < s.lr_max, "sweep.lr_min", s.lr_min, "must be below sweep.lr_max")
    _check(s.epochs >= 1, "sweep.epochs", s.epochs, "must be >= 1")
    _check(s.evals_per_epoch >= 1, "sweep.evals_per_epoch", s.evals_per_epoch, "must be >= 1")
    _check(
        all(b >= 1 for b in s.batch_sizes) and bool(s.batch_sizes), "sweep.batch_sizes", s.batch_sizes, "must be >= 1"
    )
    _check(s.max_concurrent_trials >= 1, "sweep.max_concurrent_trials", s.max_concurrent_trials, "must be >= 1")
    _check(0 < s.validation_fraction < 1, "sweep.validation_fraction", s.validation_fraction, "must be in (0, 1)")
    _check(s.dropout < 1, "sweep.dropout", s.dropout, "must be below 1 (negative: the checkpoint's own)")
