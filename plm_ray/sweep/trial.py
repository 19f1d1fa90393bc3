"""One Ray Tune trial: fine-tune sequence classification (single texts or sentence pairs) through the
same engine layer as pre-training; evaluate, checkpoint a loadable Hugging Face model and report
`evals_per_epoch` times an epoch. A trial is seeded, so a restart repeats it exactly; one handed a
checkpoint (PBT copying a better trial's weights, or Tune restoring it) continues from there."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from ray import tune

from plm_ray import hardware as hw
from plm_ray.config import Config, from_dict
from plm_ray.data.labeled import Rows, load_split
from plm_ray.data.tokenizer import load_tokenizer
from plm_ray.engine.engine import Engine, ensure_process_group
from plm_ray.model.build import build_classifier, max_sequence
from plm_ray.model.heads import Classifier
from plm_ray.store import Store, fetch_dir
from plm_ray.sweep.spec import engine_spec

CHECKPOINT_STATE = "plm_ray.json"  # in each reported checkpoint: the epoch point and the hyperparameters


@dataclass
class Trial:
    cfg: Config
    hparams: dict[str, Any]  # learning_rate, batch_size, warmup_ratio, weight_decay, epochs
    workdir: Path
    tokenizer: Any
    model: Any
    engine: Engine
    id2label: dict[int, str]
    ids: list[list[int]]  # the training rows, tokenized
    labels: np.ndarray
    valid: list[dict[str, torch.Tensor]]  # validation batches on the device
    start: float  # the epoch point the trial continues from (0: a fresh start)


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    scores = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        if denom:
            scores.append(2 * tp / denom)
    return float(np.mean(scores))


def batch_order(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: sort each window of 50 batches by length, cut it into
    batches, shuffle the batches. Padding (and the compute spent on it) falls to a few percent."""
    order = rng.permutation(len(lengths))
    window = 50 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_batches(
    ids: list[list[int]], labels: np.ndarray, pad_id: int, device: torch.device, order: list[np.ndarray]
) -> list[dict[str, torch.Tensor]]:
    """Dynamic padding to the longest sequence of each batch."""
    out = []
    for rows in order:
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for j, i in enumerate(rows):
            input_ids[j, : len(ids[i])] = torch.tensor(ids[i])
        out.append(
            {
                "input_ids": input_ids.to(device),
                "attention_mask": (input_ids != pad_id).long().to(device),
                "labels": torch.as_tensor(labels[rows], dtype=torch.long, device=device),
            }
        )
    return out


def encode(tokenizer: Any, rows: Rows, max_length: int) -> list[list[int]]:
    """Token ids of single texts, or of sentence pairs ([CLS] a [SEP] b [SEP]), truncated."""
    return tokenizer(rows.texts, rows.pairs, truncation=True, max_length=max_length)["input_ids"]


def _model(
    cfg: Config, setup: dict[str, Any], store: Store, workdir: Path, attention: str | None
) -> tuple[Any, Any, float]:
    """(tokenizer, classifier, epoch point): from Tune's checkpoint for this trial if it was handed
    one, else from the checkpoint to fine-tune, else a random init of the shape (and with the
    tokenizer) the sweep stored for it."""
    id2label = {int(k): v for k, v in setup["id2label"].items()}
    handed = tune.get_checkpoint()
    random_like, start = None, 0.0
    if handed is not None:
        model_dir = Path(handed.to_directory(str(workdir / "handed")))
        start = json.loads((model_dir / CHECKPOINT_STATE).read_text())["epoch"]
    elif setup["model"]:
        model_dir = fetch_dir(setup["model"], store, workdir / "model")
    else:
        model_dir = None
        shape_dir = fetch_dir(setup["random_like"], store, workdir / "shape")
        random_like = transformers.AutoConfig.from_pretrained(str(shape_dir))
    tokenizer = load_tokenizer(model_dir or shape_dir)
    torch.manual_seed(cfg.run.seed)  # the new head (or the whole random init) is the same in every attempt
    model = build_classifier(model_dir, len(id2label), id2label, random_like, cfg.sweep.dropout, attention)
    tokenizer.model_max_length = max_sequence(model.config)  # what `truncation=True` cuts to, in every export
    return tokenizer, model, start


def set_up(hparams: dict[str, Any], setup: dict[str, Any]) -> Trial:
    transformers.logging.set_verbosity_error()  # the new head's MISSING/UNEXPECTED report is expected here
    cfg = from_dict(setup["config"])
    s, store, run = cfg.sweep, Store(cfg.store), setup["run"]
    hardware = hw.trial(cfg)
    hardware.apply()
    workdir = Path(tempfile.mkdtemp(prefix="plm-trial-"))
    tokenizer, model, start = _model(cfg, setup, store, workdir, hardware.attention)
    train, valid = load_split(store, run, s.name, "train"), load_split(store, run, s.name, "validation")
    length = min(s.max_length, tokenizer.model_max_length)  # never past the model's positions
    ids, v_ids = encode(tokenizer, train, length), encode(tokenizer, valid, length)
    ensure_process_group(hardware)
    steps = int(hparams["epochs"]) * -(-len(ids) // int(hparams["batch_size"]))
    spec = engine_spec(cfg, hparams, steps, model.config.hidden_size, setup["deepspeed"])
    engine = Engine(Classifier(model), spec, hardware)
    by_length = np.argsort([len(x) for x in v_ids])
    valid_order = [by_length[i : i + 128] for i in range(0, len(by_length), 128)]
    valid_batches = padded_batches(v_ids, valid.labels, tokenizer.pad_token_id, engine.device, valid_order)
    id2label = {int(k): v for k, v in setup["id2label"].items()}
    return Trial(cfg, hparams, workdir, tokenizer, model, engine, id2label, ids, train.labels, valid_batches, start)


def evaluate(t: Trial) -> dict[str, float]:
    """Accuracy, macro-F1 and loss on the validation rows."""
    preds, gold, loss = [], [], 0.0
    for b in t.valid:
        logits = t.engine.forward(b)["logits"]
        loss += F.cross_entropy(logits.float(), b["labels"], reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
        gold.append(b["labels"].cpu())
    pred, true = torch.cat(preds).numpy(), torch.cat(gold).numpy()
    return {
        "accuracy": float((pred == true).mean()),
        "macro_f1": macro_f1(pred, true, len(t.id2label)),
        "loss": loss / len(true),
    }


def report(t: Trial, epoch: float, training: dict[str, float]) -> None:
    """One Tune report with a loadable checkpoint of the model as it stands."""
    ckpt = t.workdir / f"epoch-{epoch:g}"
    t.engine.export(t.model, ckpt, write=True)
    t.tokenizer.save_pretrained(str(ckpt))
    (ckpt / CHECKPOINT_STATE).write_text(json.dumps({"epoch": epoch, **t.hparams}))
    metrics = {"epoch": epoch, **evaluate(t), **training, **t.hparams}
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))
    shutil.rmtree(ckpt, ignore_errors=True)


def train_part(t: Trial, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Train on `batches`; the mean loss and the examples a second trained (read once at the end, so
    the host never waits for the GPU in between)."""
    started = time.time()
    losses = [t.engine.train_step(b)["loss"].detach() for b in batches]
    train_loss = float(torch.stack(losses).mean())
    examples = sum(len(b["labels"]) for b in batches)
    return {"train_loss": train_loss, "examples_per_second": examples / (time.time() - started)}


def finetune_trial(hparams: dict[str, Any], setup: dict[str, Any]) -> None:
    """The trainable Tune runs: evaluation points cut each epoch into equal parts, and `epoch`
    counts in fractions between them; a trial handed a checkpoint skips the points it has passed."""
    t = set_up(hparams, setup)
    s = t.cfg.sweep
    rng = np.random.default_rng(t.cfg.run.seed)
    lengths = [len(x) for x in t.ids]
    for epoch in range(int(t.hparams["epochs"])):
        order = batch_order(lengths, int(t.hparams["batch_size"]), rng)  # drawn every epoch: a restart repeats them
        points = [round(epoch + (part + 1) / s.evals_per_epoch, 4) for part in range(s.evals_per_epoch)]
        if points[-1] <= t.start:
            continue
        batches = padded_batches(t.ids, t.labels, t.tokenizer.pad_token_id, t.engine.device, order)
        cuts = np.linspace(0, len(batches), s.evals_per_epoch + 1).round().astype(int)
        for part, point in enumerate(points):
            if point > t.start:
                report(t, point, train_part(t, batches[cuts[part] : cuts[part + 1]]))
    shutil.rmtree(t.workdir, ignore_errors=True)
