"""Stage 4, masking: dynamic MLM masking at batch time, on the device the batch lives on.

Returns the masked inputs plus a boolean map of the selected positions; the model computes MLM
logits only there (the sparse head), so labels are just the original ids at those positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from plm_ray.config import MaskingSection

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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


def mask_tokens(
    input_ids: torch.Tensor, tables: MaskingTables, cfg: MaskingSection, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """BERT masking: select `probability` of the non-special tokens (whole words if configured); of
    those, `mask_fraction` become [MASK], `random_fraction` a random token, the rest stay."""
    device = input_ids.device
    special = tables.special[input_ids]
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    if cfg.whole_word:
        starts = ~tables.continuation[input_ids] | special
        positions = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids)
        # each token looks up the decision made at the start of its word
        word_start = torch.cummax(torch.where(starts, positions, 0), dim=1).values
        selected = (draw < cfg.probability).gather(1, word_start) & ~special
    else:
        selected = (draw < cfg.probability) & ~special
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < cfg.mask_fraction)
    to_random = selected & (action >= cfg.mask_fraction) & (action < cfg.mask_fraction + cfg.random_fraction)
    random_ids = torch.randint(tables.vocab_size, input_ids.shape, generator=generator, device=device)
    masked = torch.where(to_mask, torch.full_like(input_ids, tables.mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return {"input_ids": masked, "mlm_mask": selected, "labels": input_ids[selected]}
