"""Dynamic MLM masking, exact and in fixed slots, and the sparse head's loss over either (no Ray)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plm_ray.config import MaskingSection, ModelSection, TokenizerSection
from plm_ray.data import embedded
from plm_ray.data.masking import IGNORE, MaskingTables, mask_tokens, masked_capacity
from plm_ray.data.tokenizer import train_wordpiece
from plm_ray.model.build import build_mlm
from plm_ray.model.heads import SparseMLM

LINES = embedded.corpus_lines(n_docs=600, seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece([LINES], TokenizerSection(vocab_size=400))


def selection(out: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The selected positions as a boolean map of the batch."""
    selected = torch.zeros(shape.numel(), dtype=torch.bool)
    selected[out["mlm_positions"][out["labels"] != IGNORE]] = True
    return selected.view(shape)


def blocks(tokenizer, length: int = 40, n: int = 200) -> torch.Tensor:
    rows = [tokenizer(t).input_ids[:length] for t in LINES]
    return torch.tensor([r for r in rows if len(r) == length][:n])


def test_masking_statistics_and_special_tokens(tokenizer):
    tables = MaskingTables.from_tokenizer(tokenizer)
    ids = blocks(tokenizer)
    out = mask_tokens(ids, tables, MaskingSection(), torch.Generator().manual_seed(0))
    special = tables.special[ids]
    selected = selection(out, ids.shape)
    assert not (selected & special).any()
    rate = selected.sum() / (~special).sum()
    assert abs(rate.item() - 0.15) < 0.02
    changed = out["input_ids"][selected]
    frac_mask = (changed == tokenizer.mask_token_id).float().mean().item()
    frac_keep = (changed == ids[selected]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.05 and abs(frac_keep - 0.1) < 0.04
    assert torch.equal(out["labels"], ids[selected]), "exact positions, in order, labelled with the original ids"
    assert torch.equal(out["input_ids"][~selected], ids[~selected])


def test_fixed_slots_hold_the_same_selection_padded(tokenizer):
    """With a capacity the same draws select the same tokens and corrupt them alike; the positions
    come first in the same order, then padding slots labelled IGNORE, so every batch of a shape has
    the same number of slots whatever was drawn."""
    tables = MaskingTables.from_tokenizer(tokenizer)
    ids = blocks(tokenizer)
    cfg = MaskingSection()
    capacity = masked_capacity(ids.numel(), cfg)
    exact = mask_tokens(ids, tables, cfg, torch.Generator().manual_seed(5))
    fixed = mask_tokens(ids, tables, cfg, torch.Generator().manual_seed(5), capacity=capacity)
    n = len(exact["labels"])
    assert len(fixed["mlm_positions"]) == len(fixed["labels"]) == capacity > n
    assert torch.equal(fixed["input_ids"], exact["input_ids"])
    assert torch.equal(fixed["mlm_positions"][:n], exact["mlm_positions"])
    assert torch.equal(fixed["labels"][:n], exact["labels"]) and (fixed["labels"][n:] == IGNORE).all()


def test_capacity_covers_the_masked_count():
    """The slots cover the binomial count's mean plus 8 standard deviations (whole words spread
    wider), and never exceed the batch."""
    cfg = MaskingSection()
    n = 256 * 128
    mean, sd = n * 0.15, (n * 0.15 * 0.85) ** 0.5
    assert mean + 8 * sd <= masked_capacity(n, cfg) < mean + 8 * sd + 1
    assert masked_capacity(n, MaskingSection(whole_word=True)) > masked_capacity(n, cfg)
    assert masked_capacity(10, MaskingSection(probability=0.9)) == 10


def test_whole_word_masking_takes_all_pieces(tokenizer):
    tables = MaskingTables.from_tokenizer(tokenizer)
    text = " ".join(["unbelievably", "extraordinarily", "incomprehensibilities"] * 20)
    ids = torch.tensor([tokenizer(text).input_ids])
    assert tables.continuation[ids].any(), "test text must split into WordPiece pieces"
    cfg = MaskingSection(whole_word=True, probability=0.3)
    sel = selection(mask_tokens(ids, tables, cfg, torch.Generator().manual_seed(1)), ids.shape)[0]
    cont = tables.continuation[ids][0]
    for i in range(1, ids.shape[1]):
        if cont[i]:
            assert sel[i] == sel[i - 1], "a word piece was masked apart from its word"


@pytest.mark.parametrize("arch", ["bert", "roberta", "xlm", "convbert"])
def test_sparse_head_equals_dense_loss_with_exact_or_fixed_slots(tokenizer, arch: str):
    """The sparse head's loss is the dense head's cross-entropy at the selected positions, whether
    they come exact or padded into fixed slots; `count` is the number of real positions."""
    tables = MaskingTables.from_tokenizer(tokenizer)
    model = build_mlm(ModelSection(arch=arch, preset="tiny", dropout=0.0), len(tokenizer), 40, tokenizer.pad_token_id)
    ids = blocks(tokenizer, n=6)
    cfg = MaskingSection(probability=0.2)
    for capacity in (None, masked_capacity(ids.numel(), cfg)):
        batch = mask_tokens(ids, tables, cfg, torch.Generator().manual_seed(2), capacity=capacity)
        selected = selection(batch, ids.shape)
        out = SparseMLM(model)(**batch)
        dense = model(input_ids=batch["input_ids"]).logits
        assert torch.allclose(out["loss"], F.cross_entropy(dense[selected], ids[selected]), atol=1e-5)
        assert out["count"] == selected.sum()
