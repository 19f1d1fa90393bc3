"""Masking: dynamic MLM masking at batch time, on the device the batch lives on.

Returns the masked inputs, the flat positions the sparse head predicts and their labels (the
original ids). With `capacity`, the positions come in a fixed number of slots, selected positions
first and the rest padded with label IGNORE: every step then has the same shapes, so a GPU never
waits for the host to learn how many tokens were masked (a data-dependent shape is a device-to-host
sync each step). Without it (CPU, where nothing runs ahead of the host) the positions are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from plm_ray.config import MaskingSection

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100  # label of a padding slot (cross-entropy's ignore_index)
# Standard deviations of the masked count the fixed slots cover beyond its mean: a batch needs more
# with probability below 1e-15, and a position past the last slot is only left out of that step's loss.
CAPACITY_SIGMAS = 8
# Whole-word selection moves a word's pieces together, which widens the count's spread: the variance
# grows with the mean square of pieces per selected word, taken here as at most 16.
WHOLE_WORD_VARIANCE = 16


@dataclass
class MaskingTables:
    """Per-vocabulary lookups built once from the tokenizer."""

    special: torch.Tensor  # bool[vocab]: never masked
    continuation: torch.Tensor  # bool[vocab]: WordPiece "##" pieces, for whole-word masking
    mask_id: int
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> MaskingTables:
        vocab_size = len(tokenizer)
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[torch.tensor(tokenizer.all_special_ids)] = True
        continuation = torch.zeros(vocab_size, dtype=torch.bool)
        for token, idx in tokenizer.get_vocab().items():
            if token.startswith("##") and idx < vocab_size:
                continuation[idx] = True
        return cls(special, continuation, int(tokenizer.mask_token_id), vocab_size)

    def to(self, device: torch.device) -> MaskingTables:
        return MaskingTables(self.special.to(device), self.continuation.to(device), self.mask_id, self.vocab_size)


def masked_capacity(n_tokens: int, cfg: MaskingSection) -> int:
    """Slots for the positions of a batch of `n_tokens`: the masked count's mean plus CAPACITY_SIGMAS
    standard deviations (it is binomial over tokens, or over words), at most every token."""
    variance = n_tokens * cfg.probability * (1 - cfg.probability) * (WHOLE_WORD_VARIANCE if cfg.whole_word else 1)
    return min(n_tokens, math.ceil(n_tokens * cfg.probability + CAPACITY_SIGMAS * math.sqrt(variance)))


def _selection(input_ids: torch.Tensor, tables: MaskingTables, cfg: MaskingSection, draw: torch.Tensor) -> torch.Tensor:
    """Which tokens the model must predict: `probability` of the non-special ones, or of the words."""
    special = tables.special[input_ids]
    if not cfg.whole_word:
        return (draw < cfg.probability) & ~special
    starts = ~tables.continuation[input_ids] | special
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    # each token looks up the decision made at the start of its word
    word_start = torch.cummax(torch.where(starts, positions, 0), dim=1).values
    return (draw < cfg.probability).gather(1, word_start) & ~special


def _positions(selected: torch.Tensor, capacity: int | None) -> torch.Tensor:
    flat = selected.flatten()
    if capacity is None:
        return flat.nonzero().squeeze(1)
    # a stable sort puts the selected positions first, in order, without asking how many there are
    return torch.argsort((~flat).to(torch.uint8), stable=True)[:capacity]


def mask_tokens(
    input_ids: torch.Tensor,
    tables: MaskingTables,
    cfg: MaskingSection,
    generator: torch.Generator | None = None,
    capacity: int | None = None,
) -> dict[str, torch.Tensor]:
    """BERT masking: select `probability` of the non-special tokens (whole words if configured); of
    those, `mask_fraction` become [MASK], `random_fraction` a random token, the rest stay."""
    device = input_ids.device
    selected = _selection(input_ids, tables, cfg, torch.rand(input_ids.shape, generator=generator, device=device))
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < cfg.mask_fraction)
    to_random = selected & (action >= cfg.mask_fraction) & (action < cfg.mask_fraction + cfg.random_fraction)
    random_ids = torch.randint(tables.vocab_size, input_ids.shape, generator=generator, device=device)
    masked = torch.where(to_mask, torch.full_like(input_ids, tables.mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    positions = _positions(selected, capacity)
    labels = input_ids.flatten().index_select(0, positions)
    if capacity is not None:
        labels = torch.where(selected.flatten().index_select(0, positions), labels, IGNORE)
    return {"input_ids": masked, "mlm_positions": positions, "labels": labels}
