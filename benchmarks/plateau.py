"""Why from-scratch MLM stalls on the plateau: a task that needs only attention to the neighbouring
token, trained with the Hugging Face BERT plm-ray builds, with its MLM head changed, and with the
`model.arch=xlm` model (BERT's encoder, only the tied decoder as MLM head).

Sequences are pairs `a a b b c c ...` of random tokens; a masked token is its twin's copy, so a model
that attends to position i±1 drives the loss far below ln(vocab), and one that does not stays there.

    python -m benchmarks.plateau [--steps 1000]

Prints the mean MLM loss every 200 steps for each variant (chance is ln of the number of token ids drawn).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModelForMaskedLM, BertForMaskedLM, PreTrainedModel

from benchmarks.common import table
from plm_ray.config import ModelSection
from plm_ray.model.build import build_config, build_mlm
from plm_ray.model.heads import SparseMLM

VOCAB, SEQ, BATCH, MASK_ID, FIRST_TOKEN = 512, 32, 32, 3, 5


def twin_batch(generator: torch.Generator) -> Tensor:
    half = torch.randint(FIRST_TOKEN, VOCAB, (BATCH, SEQ // 2), generator=generator)
    return half.repeat_interleave(2, dim=1)


def _dense_gelu(model: BertForMaskedLM, hidden: Tensor) -> Tensor:
    transform = model.cls.predictions.transform
    return transform.transform_act_fn(transform.dense(hidden))


def _tied_decoder(model: BertForMaskedLM, hidden: Tensor) -> Tensor:
    return hidden @ model.bert.embeddings.word_embeddings.weight.T + model.cls.predictions.bias


def _bert() -> PreTrainedModel:
    return build_mlm(ModelSection(preset="tiny", dropout=0.0), VOCAB, SEQ, pad_id=0, attention="eager")


def _xlm(embed_init_std: float = 0.0) -> PreTrainedModel:
    """plm-ray's xlm model; embed_init_std > 0 replaces the embedding init plm-ray chose (BERT's 0.02)."""
    config = build_config(ModelSection(arch="xlm", preset="tiny", dropout=0.0), VOCAB, SEQ, pad_id=0)
    config.embed_init_std = embed_init_std or config.embed_init_std
    return AutoModelForMaskedLM.from_config(config, attn_implementation="eager")


def _plm_ray_loss(model: PreTrainedModel, inputs: Tensor, selected: Tensor, labels: Tensor) -> Tensor:
    """What pre-training computes: the model's own MLM head at the masked positions (SparseMLM)."""
    return SparseMLM(model)(input_ids=inputs, mlm_positions=selected.flatten().nonzero().squeeze(1), labels=labels)[
        "loss"
    ]


def _bert_head(head: Callable[[BertForMaskedLM, Tensor], Tensor]) -> Callable[..., Tensor]:
    def loss(model: BertForMaskedLM, inputs: Tensor, selected: Tensor, labels: Tensor) -> Tensor:
        hidden = model.bert(input_ids=inputs).last_hidden_state
        return F.cross_entropy(head(model, hidden[selected]), labels)

    return loss


# name -> (model builder, (model, masked inputs, masked positions, labels) -> MLM loss). The BERT rows change only
# the head; the tied decoder and its bias stay in every one.
VARIANTS: dict[str, tuple[Callable[[], PreTrainedModel], Callable[..., Tensor]]] = {
    "bert, its own head (dense+GELU+LayerNorm)": (_bert, _plm_ray_loss),
    "bert, dense+GELU, no LayerNorm": (_bert, _bert_head(lambda m, hidden: _tied_decoder(m, _dense_gelu(m, hidden)))),
    "bert, tied decoder only": (_bert, _bert_head(_tied_decoder)),
    "xlm (model.arch=xlm), embedding init 0.02": (_xlm, _plm_ray_loss),
    "xlm, XLM's own embedding init hidden**-0.5": (lambda: _xlm(128**-0.5), _plm_ray_loss),
}


def train(variant: str, steps: int, lr: float) -> list[float]:
    build, mlm_loss = VARIANTS[variant]
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    losses, means = [], []
    for step in range(1, steps + 1):
        ids = twin_batch(generator)
        selected = torch.rand(ids.shape, generator=generator) < 0.15
        loss = mlm_loss(model, torch.where(selected, MASK_ID, ids), selected, ids[selected])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 200 == 0:
            means.append(sum(losses[-200:]) / 200)
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in VARIANTS:
        started = time.time()
        means = train(name, args.steps, args.lr)
        rows.append([name, *(f"{m:.2f}" for m in means), f"{time.time() - started:.0f}"])
    header = ["model and MLM head", *(f"step {s}" for s in range(200, args.steps + 1, 200)), "seconds"]
    chance = math.log(VOCAB - FIRST_TOKEN)
    print(table(f"BERT-tiny (2L/128H), twin-copy task, lr {args.lr:g}: chance loss {chance:.2f}", header, rows))


if __name__ == "__main__":
    main()
