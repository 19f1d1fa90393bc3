"""The modules the engine trains: each wraps a Hugging Face model and returns a dict with `loss`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from plm_ray.data.masking import IGNORE
from plm_ray.model.archs import arch_of


class SparseMLM(torch.nn.Module):
    """MLM loss with logits computed only at the masked positions (~15% of tokens): the vocabulary
    projection dominates a small model's FLOPs, so this is most of the speed-up over the dense head.
    `mlm_positions` index the flattened batch; a label of IGNORE marks a padding slot (a fixed number
    of slots keeps the step free of data-dependent shapes on GPUs, data/masking.py)."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.head = arch_of(model.config).mlm_head(model)

    def forward(
        self, input_ids: torch.Tensor, mlm_positions: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        hidden = self.model.base_model(input_ids=input_ids).last_hidden_state
        logits = self.head(hidden.flatten(0, 1).index_select(0, mlm_positions))
        valid = labels != IGNORE
        out = {"loss": F.cross_entropy(logits.float(), labels, ignore_index=IGNORE), "count": valid.sum()}
        if not self.training:  # masked-token accuracy is for evaluation: its argmax costs a training step time
            out["correct"] = ((logits.argmax(-1) == labels) & valid).sum()
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
