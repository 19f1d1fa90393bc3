"""Model: masked-LM and sequence classifiers built with `transformers` from the registry's
configs (archs.py), from an existing checkpoint, or with a random init of a checkpoint's shape."""

from __future__ import annotations

import math
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from plm_ray.config import PRESETS, ConfigError, ModelSection
from plm_ray.model.archs import ARCHS, Shape, arch_of

VOCAB_MULTIPLE = 64  # embedding and MLM-decoder matmuls run faster on multiples of 64


def padded_vocab(n_tokens: int) -> int:
    return math.ceil(n_tokens / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def shape_of(cfg: ModelSection, n_tokens: int, block_size: int, pad_id: int) -> Shape:
    layers, hidden, heads, inter = PRESETS[cfg.preset]
    return Shape(
        vocab=padded_vocab(n_tokens),
        layers=cfg.num_layers or layers,
        hidden=cfg.hidden_size or hidden,
        heads=cfg.num_heads or heads,
        intermediate=cfg.intermediate_size or inter,
        dropout=0.1 if cfg.dropout < 0 else cfg.dropout,
        positions=cfg.max_positions or block_size,
        pad_id=pad_id,
    )


def build_config(cfg: ModelSection, n_tokens: int, block_size: int, pad_id: int) -> PretrainedConfig:
    return ARCHS[cfg.arch].build(shape_of(cfg, n_tokens, block_size, pad_id))


def max_sequence(config: PretrainedConfig) -> int:
    return config.max_position_embeddings - arch_of(config).position_offset(config)


def load_config(location: str | Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(str(location))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"not a loadable Hugging Face checkpoint: {location} ({str(exc).splitlines()[0]})") from exc


def check_positions(location: str | Path, block_size: int) -> None:
    """Refuse a block length the checkpoint's position embeddings cannot hold."""
    config = load_config(location)
    if block_size > max_sequence(config):
        raise ConfigError(
            f"data.block_size = {block_size} is larger than the {max_sequence(config)} positions of model {location}"
        )


def _load(kind: type, location: str | Path, attention: str | None, **kwargs: object) -> PreTrainedModel:
    try:
        return kind.from_pretrained(str(location), attn_implementation=attention, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"not a loadable Hugging Face checkpoint: {location} ({str(exc).splitlines()[0]})") from exc


def build_mlm(
    cfg: ModelSection,
    n_tokens: int,
    block_size: int,
    pad_id: int,
    init_dir: Path | None = None,
    attention: str | None = None,
) -> PreTrainedModel:
    """A fresh model from the preset, or an existing checkpoint to continue pre-training."""
    if init_dir is not None:
        model = _load(AutoModelForMaskedLM, init_dir, attention)
        if model.config.vocab_size < n_tokens:
            raise ConfigError(
                f"model {init_dir} has {model.config.vocab_size} embeddings but the tokenizer "
                f"has {n_tokens} tokens; use the checkpoint's own tokenizer"
            )
    else:
        model = AutoModelForMaskedLM.from_config(
            build_config(cfg, n_tokens, block_size, pad_id), attn_implementation=attention
        )
    if block_size > max_sequence(model.config):
        raise ConfigError(
            f"data.block_size = {block_size} is larger than the model's {max_sequence(model.config)} positions"
        )
    return model


def build_classifier(
    location: Path | None,
    num_labels: int,
    id2label: dict[int, str],
    random_like: PretrainedConfig | None = None,
    dropout: float = -1.0,
    attention: str | None = None,
) -> PreTrainedModel:
    """From a pre-trained checkpoint, or (location None) a random init with `random_like`'s shape;
    `dropout` >= 0 replaces the checkpoint's hidden and attention dropout."""
    overrides: dict[str, object] = {
        "num_labels": num_labels,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }
    base = random_like if location is None else load_config(location)
    if base is None:
        raise ValueError("build_classifier needs a checkpoint location or a random_like config")
    if dropout >= 0:
        overrides.update(dict.fromkeys(arch_of(base).dropout_keys, dropout))
    config = type(base).from_dict({**base.to_dict(), **overrides})
    if location is None:
        return AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    return _load(AutoModelForSequenceClassification, location, attention, config=config)
