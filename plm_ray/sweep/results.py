"""A finished sweep's results: each trial's history and kept checkpoint, the table (results.csv,
results.json) and the best model copied to `<run>/<sweep>/best_model/`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ray import tune

from plm_ray.config import Config
from plm_ray.store import Store

HPARAMS = ("learning_rate", "batch_size", "warmup_ratio", "weight_decay", "epochs")
SCORES = ("accuracy", "macro_f1", "loss")
RESULT_FIELDS = ["trial_id", "status", *HPARAMS, "epochs_run", "best_epoch", *SCORES, "checkpoint"]


def _row(result: tune.Result, store: Store, metric: str, better: Any) -> dict[str, Any]:
    """A trial's hyperparameters, its evaluations, and the figures of the checkpoint Tune kept (the
    best point by the sweep's metric; of equal scores the newest): those of the model a user gets."""
    row: dict[str, Any] = {
        "trial_id": Path(result.path).name,
        "status": "ERROR" if result.error else "OK",
        **{k: result.config[k] for k in HPARAMS},
    }
    history = result.metrics_dataframe
    if history is None or not len(history):
        return row
    # a trial restarted by a restore reports its epochs again: keep each epoch's last report
    history = history.drop_duplicates("epoch", keep="last").sort_values("epoch")
    kinds = ("epoch", *SCORES, "train_loss", "examples_per_second")
    row["history"] = [{k: float(e[k]) for k in kinds} for _, e in history.iterrows()]
    row["epochs_run"] = float(history["epoch"].max())  # fractional with sweep.evals_per_epoch > 1
    if result.best_checkpoints:
        checkpoint, best = better(result.best_checkpoints, key=lambda kept: kept[1][metric])
        row.update({k: float(best[k]) for k in SCORES}, best_epoch=float(best["epoch"]))
        row["checkpoint"] = store.location_of(checkpoint.path)
    return row


def collect_results(grid: tune.ResultGrid, cfg: Config, store: Store, run: str) -> dict[str, Any]:
    metric, sweep_name = cfg.sweep.metric, cfg.sweep.name
    better = min if metric == "loss" else max
    rows = [_row(result, store, metric, better) for result in grid]
    finished = [r for r in rows if r.get("checkpoint")]
    if not finished:
        errors = "; ".join(str(r.error).splitlines()[-1] for r in grid if r.error)
        raise RuntimeError(f"no sweep trial finished an epoch: {errors}")
    best = better(finished, key=lambda r: r[metric])
    best_uri = store.copy_within(store.fs_path_of(best["checkpoint"]), run, sweep_name, "best_model")
    rows.sort(key=lambda r: r["learning_rate"])
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    store.write_bytes(table.getvalue().encode(), run, sweep_name, "results.csv")
    out = {
        "metric": metric,
        "trials": rows,
        "best": {
            **{k: best[k] for k in (*HPARAMS, *SCORES)},
            "checkpoint": best_uri,
            "trial_checkpoint": best["checkpoint"],
        },
    }
    store.write_json(out, run, sweep_name, "results.json")
    return out
