"""Model presets, the sparse MLM head for every architecture, and classifiers built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plm_ray.config import PRESETS, ConfigError, ModelSection
from plm_ray.model.build import build_classifier, build_mlm, check_positions


def tiny_classifier():
    """A 2-class BERT-tiny classifier from a random init, for the engine tests."""
    return build_classifier(None, 2, {0: "neg", 1: "pos"}, build_mlm(ModelSection(preset="tiny"), 500, 32, 0).config)


def test_presets_and_overrides():
    assert {"tiny", "mini", "small", "base"} <= set(PRESETS)
    model = build_mlm(ModelSection(preset="mini", num_layers=1, hidden_size=64, num_heads=2), 500, 32, 0)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (1, 64)


def test_block_longer_than_checkpoint_positions(tmp_path: Path):
    build_mlm(ModelSection(preset="tiny"), 500, 32, 0).save_pretrained(tmp_path)
    check_positions(tmp_path, 32)
    with pytest.raises(ConfigError, match="data.block_size = 64 is larger than the 32 positions"):
        check_positions(tmp_path, 64)
    with pytest.raises(ConfigError, match="is larger than the model's 32 positions"):
        build_mlm(ModelSection(preset="tiny"), 500, 64, 0, init_dir=tmp_path)


def test_xlm_head_is_the_tied_decoder_and_its_classifier_takes_the_dropout(tmp_path: Path):
    model = build_mlm(ModelSection(arch="xlm", preset="tiny"), 500, 32, 0)
    assert model.pred_layer.proj.weight is model.transformer.embeddings.weight
    model.save_pretrained(tmp_path)
    classifier = build_classifier(tmp_path, 3, {0: "a", 1: "b", 2: "c"}, dropout=0.0)
    assert (classifier.config.dropout, classifier.config.attention_dropout, classifier.config.num_labels) == (0, 0, 3)


@pytest.mark.parametrize("arch", ["bert", "convbert"])
def test_only_convbert_sees_word_order_without_position_embeddings(tmp_path: Path, arch: str):
    """The reason for the arch. With the position embeddings zeroed, swapping tokens 10 and 11 leaves
    every other output of BERT as it was (attention alone is blind to order). ConvBERT's 9-wide
    convolutions see it at once: tokens 6 and 15 have only one of the two in their window."""
    torch.manual_seed(0)
    model = build_mlm(ModelSection(arch=arch, preset="tiny", dropout=0.0), 500, 32, 0).eval()
    embeddings = model.base_model.embeddings
    with torch.no_grad():
        embeddings.position_embeddings.weight.zero_()
        ids = torch.randint(5, 500, (1, 32))
        swapped = ids.clone()
        swapped[0, [10, 11]] = ids[0, [11, 10]]
        out, out_swapped = (model.base_model(input_ids=x).last_hidden_state[0] for x in (ids, swapped))
    changed = (out - out_swapped).abs().amax(-1)[[6, 15]]
    assert bool((changed > 1e-3).all() if arch == "convbert" else (changed < 1e-4).all()), changed
    if arch == "bert":
        return
    assert model.generator_lm_head.weight is embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    classifier = build_classifier(tmp_path, 2, {0: "neg", 1: "pos"}, dropout=0.0)
    assert (classifier.config.hidden_dropout_prob, classifier.config.model_type) == (0, "convbert")
