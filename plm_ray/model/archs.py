"""The architecture registry: one entry per `model.arch`, everything plm-ray needs to know about it.

Adding an architecture is one `Arch` in `ARCHS`. Light on purpose (transformers is imported inside
the builders, nothing of plm-ray's): the config's schema takes `model.arch`'s choices from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class Shape:
    """A model's size, resolved from the preset and the explicit overrides."""

    vocab: int
    layers: int
    hidden: int
    heads: int
    intermediate: int
    dropout: float
    positions: int  # the longest sequence the model must take
    pad_id: int


@dataclass(frozen=True)
class Arch:
    build: Callable[[Shape], PretrainedConfig]  # a fresh Hugging Face config of this shape
    mlm_head: Callable[[PreTrainedModel], torch.nn.Module]  # hidden states -> vocabulary logits
    dropout_keys: tuple[str, str] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    position_offset: Callable[[PretrainedConfig], int] = lambda config: 0  # positions the model reserves


def _bert_common(shape: Shape) -> dict[str, object]:
    return {
        "vocab_size": shape.vocab,
        "num_hidden_layers": shape.layers,
        "hidden_size": shape.hidden,
        "num_attention_heads": shape.heads,
        "intermediate_size": shape.intermediate,
        "hidden_dropout_prob": shape.dropout,
        "attention_probs_dropout_prob": shape.dropout,
        "pad_token_id": shape.pad_id,
        "type_vocab_size": 1,
    }


def _bert(shape: Shape) -> PretrainedConfig:
    from transformers import BertConfig

    return BertConfig(max_position_embeddings=shape.positions, **_bert_common(shape))


def _roberta(shape: Shape) -> PretrainedConfig:
    from transformers import RobertaConfig

    # RoBERTa numbers positions from pad_id + 1
    return RobertaConfig(max_position_embeddings=shape.positions + shape.pad_id + 1, **_bert_common(shape))


def _convbert(shape: Shape) -> PretrainedConfig:
    """Half the heads become span-based convolutions over 9 neighbours. They see word order from the
    first step; BERT's and XLM's learned positions stay unused for a whole CPU-sized budget on the
    Wikipedia shards (RESULTS.md)."""
    from transformers import ConvBertConfig

    common = _bert_common(shape)
    return ConvBertConfig(max_position_embeddings=shape.positions, embedding_size=shape.hidden, head_ratio=2, **common)


def _xlm(shape: Shape) -> PretrainedConfig:
    """XLM's encoder is BERT's post-LayerNorm one, but its MLM head is only the tied decoder and a bias.
    With BERT's head (dense, GELU, LayerNorm) a fresh model never learns benchmarks/plateau.py's
    neighbour-copy task, with this one it does (RESULTS.md). XLM fixes the feed-forward width at 4 x
    hidden (the config's checks refuse another)."""
    from transformers import XLMConfig

    return XLMConfig(
        vocab_size=shape.vocab,
        emb_dim=shape.hidden,
        n_layers=shape.layers,
        n_heads=shape.heads,
        dropout=shape.dropout,
        attention_dropout=shape.dropout,
        n_langs=1,
        use_lang_emb=False,
        max_position_embeddings=shape.positions,
        pad_token_id=shape.pad_id,
        embed_init_std=0.02,  # BERT's; XLM's default hidden**-0.5 stalls too (benchmarks/plateau.py)
    )


def _cls_or_lm_head(model: PreTrainedModel) -> torch.nn.Module:
    return model.cls if hasattr(model, "cls") else model.lm_head


def _convbert_head(model: PreTrainedModel) -> torch.nn.Module:
    import torch

    return torch.nn.Sequential(model.generator_predictions, model.generator_lm_head)


ARCHS: dict[str, Arch] = {
    "bert": Arch(_bert, _cls_or_lm_head),
    "roberta": Arch(_roberta, _cls_or_lm_head, position_offset=lambda config: config.pad_token_id + 1),
    "xlm": Arch(_xlm, lambda model: model.pred_layer.proj, dropout_keys=("dropout", "attention_dropout")),
    "convbert": Arch(_convbert, _convbert_head),
}


def arch_of(config: PretrainedConfig) -> Arch:
    """The entry for a checkpoint's model type; BERT's for the BERT-likes plm-ray does not build
    itself (a MiniLM or DistilRoBERTa checkpoint given as `sweep.model`)."""
    return ARCHS.get(config.model_type, ARCHS["bert"])
