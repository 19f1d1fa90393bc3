"""Stage 5, model: BERT / RoBERTa / XLM / ConvBERT masked-LM and classifier built with `transformers`,
plus the thin wrappers the shared engine trains (each returns a dict with `loss`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    ConvBertConfig,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    XLMConfig,
)

from plm_ray.config import PRESETS, ConfigError, ModelSection

# The config keys of hidden and attention dropout, by model type (BERT's names for every other type)
DROPOUT_KEYS = {
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "xlm": ("dropout", "attention_dropout"),
}
VOCAB_MULTIPLE = 64  # embedding and MLM-decoder matmuls run faster on multiples of 64


def padded_vocab(n_tokens: int) -> int:
    return math.ceil(n_tokens / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def build_config(cfg: ModelSection, n_tokens: int, block_size: int, pad_id: int) -> PretrainedConfig:
    layers, hidden, heads, inter = PRESETS[cfg.preset]
    layers, hidden = cfg.num_layers or layers, cfg.hidden_size or hidden
    heads, inter = cfg.num_heads or heads, cfg.intermediate_size or inter
    dropout = 0.1 if cfg.dropout < 0 else cfg.dropout
    positions = cfg.max_positions or block_size
    if cfg.arch == "xlm":
        return _xlm_config(padded_vocab(n_tokens), layers, hidden, heads, inter, dropout, positions, pad_id)
    common = dict(
        vocab_size=padded_vocab(n_tokens),
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=inter,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=pad_id,
        type_vocab_size=1,
    )
    if cfg.arch == "roberta":  # RoBERTa offsets positions by pad_id + 1
        return RobertaConfig(max_position_embeddings=positions + pad_id + 1, **common)
    if cfg.arch == "convbert":
        # Half the heads become span-based convolutions over 9 neighbours. They see word order from the
        # first step; BERT's and XLM's learned positions stay unused for the whole 2-hour budget on the
        # Wikipedia shards (RESULTS.md: loss with shuffled tokens equals loss in order).
        return ConvBertConfig(max_position_embeddings=positions, embedding_size=hidden, head_ratio=2, **common)
    return BertConfig(max_position_embeddings=positions, **common)


def _xlm_config(
    vocab: int, layers: int, hidden: int, heads: int, inter: int, dropout: float, positions: int, pad_id: int
) -> XLMConfig:
    """XLM's encoder is BERT's post-LayerNorm one, but its MLM head is only the tied decoder and a bias.
    With BERT's head (dense, GELU, LayerNorm) a fresh model never learns benchmarks/plateau.py's
    neighbour-copy task, with this one it does, and on real text its loss falls faster (RESULTS.md).
    XLM fixes the feed-forward width at 4 x hidden."""
    if inter != 4 * hidden:
        raise ConfigError(f"model.intermediate_size = {inter}: arch xlm needs 4 x hidden_size = {4 * hidden}")
    return XLMConfig(
        vocab_size=vocab,
        emb_dim=hidden,
        n_layers=layers,
        n_heads=heads,
        dropout=dropout,
        attention_dropout=dropout,
        n_langs=1,
        use_lang_emb=False,
        max_position_embeddings=positions,
        pad_token_id=pad_id,
        embed_init_std=0.02,  # BERT's; XLM's default hidden**-0.5 stalls too (benchmarks/plateau.py)
    )


def max_sequence(config: PretrainedConfig) -> int:
    offset = config.pad_token_id + 1 if config.model_type == "roberta" else 0
    return config.max_position_embeddings - offset


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


def attention_implementation(requested: str, use_gpu: bool) -> str | None:
    """On GPUs None, transformers' default: PyTorch SDPA where the architecture has it (XLM has not:
    eager). On CPU eager, which trains ~15 % faster here (the CPU flash kernel's backward is slow at
    BERT's head sizes; see BENCHMARKS.md)."""
    if requested != "auto":
        return requested
    return None if use_gpu else "eager"


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
    assert base is not None
    if dropout >= 0:
        overrides.update(dict.fromkeys(DROPOUT_KEYS.get(base.model_type, DROPOUT_KEYS["bert"]), dropout))
    config = type(base).from_dict({**base.to_dict(), **overrides})
    if location is None:
        return AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    return _load(AutoModelForSequenceClassification, location, attention, config=config)


def _mlm_head(model: PreTrainedModel) -> torch.nn.Module:
    if model.config.model_type == "xlm":
        return model.pred_layer.proj
    if model.config.model_type == "convbert":
        return torch.nn.Sequential(model.generator_predictions, model.generator_lm_head)
    return model.cls if hasattr(model, "cls") else model.lm_head


class SparseMLM(torch.nn.Module):
    """MLM loss with logits computed only at the masked positions (~15% of tokens): the vocabulary
    projection dominates a small model's FLOPs, so this is most of the speed-up over the dense head."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, mlm_mask: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.model.base_model(input_ids=input_ids).last_hidden_state
        logits = _mlm_head(self.model)(hidden[mlm_mask])
        out = {
            "loss": F.cross_entropy(logits.float(), labels),
            "count": torch.tensor(labels.numel(), device=labels.device),
        }
        if not self.training:  # masked-token accuracy is for evaluation: its argmax cost ~3 % of a training step
            out["correct"] = (logits.argmax(-1) == labels).sum()
        return out


class Classifier(torch.nn.Module):
    """Sequence classification with the model's own head; same dict interface as SparseMLM."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}
