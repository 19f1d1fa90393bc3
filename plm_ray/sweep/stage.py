"""Stage 7, sweep, the driver side: a Ray Tune search over fine-tuning hyperparameters. Each trial
(trial.py) reports accuracy and macro-F1 every epoch, or `evals_per_epoch` times an epoch (ASHA stops
weak trials; the best point of a trial is often inside an epoch), with a loadable checkpoint each
time. An interrupted sweep continues with `Tuner.restore`: finished trials keep their results, the
rest start again from their first epoch."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from plm_ray.config import Config, ConfigError
from plm_ray.store import Store

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


def _trial(hparams: dict[str, Any], setup: dict[str, Any]) -> None:
    """The trainable. Tune unpickles it by reference in the driver too, so it imports the trial
    (DeepSpeed, the model classes: seconds of imports) only where it runs."""
    from plm_ray.sweep.trial import finetune_trial

    finetune_trial(hparams, setup)


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
        tune.with_parameters(_trial, setup=setup), {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial}
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
                    {k: float(e[k]) for k in ("epoch", "accuracy", "macro_f1", "train_loss", "examples_per_second")}
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
