"""Stage 7, sweep: a Ray Tune search over fine-tuning hyperparameters. Each trial fine-tunes sequence
classification through the same DeepSpeed engine layer as pre-training, reports accuracy and
macro-F1 every epoch, or `evals_per_epoch` times an epoch (ASHA stops weak trials; the best point of
a trial is often inside an epoch), and checkpoints a loadable Hugging Face model at each report.
An interrupted sweep continues with `Tuner.restore`: finished trials keep their results, the rest
start again from their first epoch (a trial is seeded, so a restart repeats it exactly)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from plm_ray.config import Config, ConfigError, from_dict
from plm_ray.data.labeled import load_split
from plm_ray.store import Store, fetch_dir

RESULT_FIELDS = [
    "trial_id",
    "status",
    "learning_rate",
    "batch_size",
    "epochs_run",
    "best_epoch",
    "accuracy",
    "macro_f1",
    "checkpoint",
]


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


def _batches(
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


def finetune_trial(hparams: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: fine-tune; evaluate and checkpoint `evals_per_epoch` times an epoch."""
    # Trial-only imports: the sweep's driver never builds a model (DeepSpeed's import alone is seconds)
    import transformers

    from plm_ray.data.tokenizer import load_tokenizer
    from plm_ray.engine import Engine, deepspeed_config, ensure_process_group, resolve_precision
    from plm_ray.model import Classifier, attention_implementation, build_classifier

    transformers.logging.set_verbosity_error()  # the new head's MISSING/UNEXPECTED report is expected here
    cfg = from_dict(setup["config"])
    s, store, run = cfg.sweep, Store(cfg.store), setup["run"]
    workdir = Path(tempfile.mkdtemp(prefix="plm-trial-"))
    model_dir = fetch_dir(setup["model"], store, workdir / "model") if setup["model"] else None
    tokenizer = load_tokenizer(model_dir or store.download_dir(workdir / "tokenizer", run, "tokenizer"))
    random_like = None
    if model_dir is None:
        random_like = transformers.AutoConfig.from_pretrained(
            str(fetch_dir(setup["random_like"], store, workdir / "shape"))
        )
    id2label = {int(k): v for k, v in setup["id2label"].items()}
    torch.manual_seed(cfg.run.seed)  # the new head (or the whole random init) is the same in every attempt
    use_gpu = s.gpus_per_trial > 0
    attention = attention_implementation(cfg.model.attention, use_gpu)
    model = build_classifier(model_dir, len(id2label), id2label, random_like, s.dropout, attention)

    texts, labels = load_split(store, run, s.name, "train")
    v_texts, v_labels = load_split(store, run, s.name, "validation")
    encode = lambda xs: tokenizer(xs, truncation=True, max_length=s.max_length)["input_ids"]  # noqa: E731
    ids, v_ids = encode(texts), encode(v_texts)

    ensure_process_group(use_gpu)
    batch_size, lr = int(hparams["batch_size"]), float(hparams["learning_rate"])
    steps = s.epochs * -(-len(ids) // batch_size)
    precision = resolve_precision(s.precision, use_gpu)
    engine = Engine(
        Classifier(model),
        deepspeed_config(
            micro_batch=batch_size,
            grad_accum=1,
            zero_stage=s.zero_stage,
            offload=False,
            precision=precision,
            learning_rate=lr,
            weight_decay=s.weight_decay,
            warmup_steps=int(s.warmup_ratio * steps),
            total_steps=steps,
            schedule="linear",
            grad_clip=1.0,
            hidden_size=model.config.hidden_size,
            use_gpu=use_gpu,
        ),
        s.weight_decay,
    )
    rng = np.random.default_rng(cfg.run.seed)
    by_length = np.argsort([len(x) for x in v_ids])
    valid_order = [by_length[i : i + 128] for i in range(0, len(by_length), 128)]
    valid = _batches(v_ids, v_labels, tokenizer.pad_token_id, engine.device, valid_order)
    lengths = [len(x) for x in ids]

    def evaluate_and_report(epoch: float, losses: list[torch.Tensor]) -> None:
        """Accuracy and macro-F1 on the validation rows, a loadable checkpoint, one Tune report."""
        preds, gold = [], []
        for b in valid:
            preds.append(engine.forward(b)["logits"].argmax(-1).cpu())
            gold.append(b["labels"].cpu())
        pred, true = torch.cat(preds).numpy(), torch.cat(gold).numpy()
        ckpt = workdir / f"epoch-{epoch:g}"
        engine.export(model, ckpt, write=True)
        tokenizer.save_pretrained(str(ckpt))
        (ckpt / "plm_ray.json").write_text(json.dumps({"epoch": epoch, "learning_rate": lr}))
        metrics = {
            "epoch": epoch,
            "accuracy": float((pred == true).mean()),
            "macro_f1": macro_f1(pred, true, len(id2label)),
            "train_loss": float(torch.stack(losses).mean()),
            "learning_rate": lr,
            "batch_size": batch_size,
        }
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))
        shutil.rmtree(ckpt, ignore_errors=True)

    for epoch in range(s.epochs):
        batches = _batches(ids, labels, tokenizer.pad_token_id, engine.device, batch_order(lengths, batch_size, rng))
        # evaluation points cut the epoch into equal parts; "epoch" counts in fractions between them
        cuts = np.linspace(0, len(batches), s.evals_per_epoch + 1).round().astype(int)
        for part in range(s.evals_per_epoch):
            losses = [engine.train_step(b)["loss"].detach() for b in batches[cuts[part] : cuts[part + 1]]]
            evaluate_and_report(round(epoch + (part + 1) / s.evals_per_epoch, 4), losses)
    shutil.rmtree(workdir, ignore_errors=True)


def check_trial_resources(cfg: Config) -> None:
    """A trial larger than every node stays PENDING forever; refuse it up front."""
    s = cfg.sweep
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= s.cpus_per_trial and r.get("GPU", 0) >= s.gpus_per_trial for r in nodes):
        biggest = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
        raise ConfigError(
            f"sweep trial resources (cpus_per_trial = {s.cpus_per_trial}, gpus_per_trial = "
            f"{s.gpus_per_trial}) fit no node; the largest has {biggest[0]:g} CPUs, {biggest[1]:g} GPUs"
        )


def search_space(cfg: Config) -> tuple[dict[str, Any], int]:
    s = cfg.sweep
    lr = tune.grid_search(s.learning_rates) if s.lr_space == "grid" else tune.loguniform(s.lr_min, s.lr_max)
    return {"learning_rate": lr, "batch_size": tune.grid_search(s.batch_sizes)}, (
        1 if s.lr_space == "grid" else s.num_samples
    )


def trial_dirname(trial: Trial) -> str:
    """Ray's default name rounds the rate to 4 decimals, so a 5e-05 trial reads learning_rate=0.0001."""
    return f"{trial.trial_id}_lr={trial.config['learning_rate']:.3g}_bs={trial.config['batch_size']}"


def run_sweep(
    cfg: Config, store: Store, run: str, model: str, random_like: str, labels: dict[str, Any]
) -> dict[str, Any]:
    """Run the Tuner; write the results table and the best model into the store."""
    s = cfg.sweep
    check_trial_resources(cfg)
    space, samples = search_space(cfg)
    setup = {
        "config": cfg.to_dict(),
        "run": run,
        "model": model,
        "random_like": random_like,
        "id2label": labels["id2label"],
    }
    trainable = tune.with_resources(
        tune.with_parameters(finetune_trial, setup=setup), {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial}
    )
    experiment = store.path(run, s.name)
    if tune.Tuner.can_restore(experiment, storage_filesystem=store.fs):
        print(f"[plm-ray] sweep {s.name} continues: finished trials are kept, the others run again", flush=True)
        tuner = tune.Tuner.restore(
            experiment, trainable, restart_errored=True, param_space=space, storage_filesystem=store.fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="accuracy",
                mode="max",
                num_samples=samples,
                max_concurrent_trials=s.max_concurrent_trials,
                trial_dirname_creator=trial_dirname,
                # "epoch", not Tune's iteration count: a trial restarted by a restore counts from 1 again
                scheduler=ASHAScheduler(time_attr="epoch", max_t=s.epochs, grace_period=s.grace_period),
            ),
            run_config=tune.RunConfig(
                name=s.name,
                storage_path=store.path(run),
                storage_filesystem=store.fs,
                verbose=1,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute="accuracy", checkpoint_score_order="max"
                ),
            ),
        )
    return collect_results(tuner.fit(), store, run, s.name)


def collect_results(grid: tune.ResultGrid, store: Store, run: str, sweep_name: str) -> dict[str, Any]:
    rows = []
    for result in grid:
        row: dict[str, Any] = {
            "trial_id": Path(result.path).name,
            "status": "ERROR" if result.error else "OK",
            "learning_rate": result.config["learning_rate"],
            "batch_size": result.config["batch_size"],
        }
        history = result.metrics_dataframe
        if history is not None and len(history):
            # a trial restarted by a restore reports its epochs again: keep each epoch's last report
            history = history.drop_duplicates("epoch", keep="last").sort_values("epoch")
            row.update(
                history=[
                    {k: float(e[k]) for k in ("epoch", "accuracy", "macro_f1", "train_loss")}
                    for _, e in history.iterrows()
                ],
                epochs_run=float(history["epoch"].max()),  # fractional with sweep.evals_per_epoch > 1
            )
            # the row describes the checkpoint Tune kept (num_to_keep=1: the best point; of equal
            # scores the newest), so its figures are those of the model a user gets
            if result.best_checkpoints:
                checkpoint, best = max(result.best_checkpoints, key=lambda kept: kept[1]["accuracy"])
                row.update(
                    best_epoch=float(best["epoch"]),
                    accuracy=float(best["accuracy"]),
                    macro_f1=float(best["macro_f1"]),
                    checkpoint=store.location_of(checkpoint.path),
                )
        rows.append(row)
    finished = [r for r in rows if r.get("checkpoint")]
    if not finished:
        errors = "; ".join(str(r.error).splitlines()[-1] for r in grid if r.error)
        raise RuntimeError(f"no sweep trial finished an epoch: {errors}")
    best = max(finished, key=lambda r: r["accuracy"])
    best_path = store.fs_path_of(best["checkpoint"])
    best_uri = store.copy_within(best_path, run, sweep_name, "best_model")
    rows.sort(key=lambda r: r["learning_rate"])
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    store.write_bytes(table.getvalue().encode(), run, sweep_name, "results.csv")
    out = {
        "trials": rows,
        "best": {
            "learning_rate": best["learning_rate"],
            "batch_size": best["batch_size"],
            "accuracy": best["accuracy"],
            "macro_f1": best["macro_f1"],
            "checkpoint": best_uri,
            "trial_checkpoint": best["checkpoint"],
        },
    }
    store.write_json(out, run, sweep_name, "results.json")
    return out
