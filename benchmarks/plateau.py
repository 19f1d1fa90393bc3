"""Why from-scratch MLM stalls on the plateau: a task that needs only attention to the neighbouring
token, trained with the Hugging Face BERT plm-ray builds and with its MLM head changed.

Sequences are pairs `a a b b c c ...` of random tokens; a masked token is its twin's copy, so a model
that attends to position i±1 drives the loss far below ln(vocab), and one that does not stays there.

    python -m benchmarks.plateau [--steps 1000]

Prints the mean MLM loss every 200 steps for each head (chance is ln of the number of token ids drawn).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM

from benchmarks.common import table
from plm_ray.config import ModelSection
from plm_ray.model import build_mlm

VOCAB, SEQ, BATCH, MASK_ID, FIRST_TOKEN = 512, 32, 32, 3, 5


def twin_batch(generator: torch.Generator) -> torch.Tensor:
    half = torch.randint(FIRST_TOKEN, VOCAB, (BATCH, SEQ // 2), generator=generator)
    return half.repeat_interleave(2, dim=1)


def _dense_gelu(model: BertForMaskedLM, hidden: torch.Tensor) -> torch.Tensor:
    transform = model.cls.predictions.transform
    return transform.transform_act_fn(transform.dense(hidden))


def _tied_decoder(model: BertForMaskedLM, hidden: torch.Tensor) -> torch.Tensor:
    return hidden @ model.bert.embeddings.word_embeddings.weight.T + model.cls.predictions.bias


# (model, hidden states) -> logits: BERT's own head, then parts of its transform dropped (the tied
# decoder and its bias stay in every one).
HEADS: dict[str, Callable[[BertForMaskedLM, torch.Tensor], torch.Tensor]] = {
    "bert (dense+GELU+LayerNorm)": lambda model, hidden: model.cls(hidden),
    "dense+GELU, no LayerNorm": lambda model, hidden: _tied_decoder(model, _dense_gelu(model, hidden)),
    "tied decoder only": _tied_decoder,
}


def train(head_name: str, steps: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    model = build_mlm(ModelSection(preset="tiny", dropout=0.0), VOCAB, SEQ, pad_id=0, attention="eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    losses, means = [], []
    for step in range(1, steps + 1):
        ids = twin_batch(generator)
        selected = torch.rand(ids.shape, generator=generator) < 0.15
        hidden = model.bert(input_ids=torch.where(selected, MASK_ID, ids)).last_hidden_state
        loss = F.cross_entropy(HEADS[head_name](model, hidden[selected]), ids[selected])
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
    for name in HEADS:
        started = time.time()
        means = train(name, args.steps, args.lr)
        rows.append([name, *(f"{m:.2f}" for m in means), f"{time.time() - started:.0f}"])
    header = ["MLM head", *(f"step {s}" for s in range(200, args.steps + 1, 200)), "seconds"]
    chance = math.log(VOCAB - FIRST_TOKEN)
    print(table(f"BERT-tiny (2L/128H), twin-copy task, lr {args.lr:g}: chance loss {chance:.2f}", header, rows))


if __name__ == "__main__":
    main()
