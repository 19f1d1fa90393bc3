"""What users bring from the tools they know, on real Ray, Tune and DeepSpeed: MLflow and W&B
(offline) tracking, Tune's searchers and schedulers, sentence-pair tasks, model cards and exports
that truncate long inputs."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plm_ray import pipeline

from .conftest import LABELED_TEXTS, small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> dict[str, Any]:
    """`run` with MLflow (a file store) and W&B (offline: conftest sets WANDB_MODE) configured."""
    root = tmp_path_factory.mktemp("store")
    mlruns = root / "mlruns"
    extra = [f"tracking.mlflow_uri={mlruns}", "tracking.wandb_project=plm-test", "sweep.learning_rates=[0.001]"]
    summary = pipeline.execute("run", small_config(root, "tracked", *extra))
    return {"root": root, "run": root / "tracked", "summary": summary, "mlruns": mlruns}


def test_pretraining_and_every_trial_reach_mlflow(tracked: dict[str, Any]):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracked["mlruns"].as_uri())
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    pretrain = runs.pop("pretrain")
    losses = client.get_metric_history(pretrain.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 7))  # every logged step of the 6
    assert pretrain.data.metrics["eval_loss"] == pytest.approx(tracked["summary"]["pretrain"]["eval_loss"])
    assert pretrain.data.params["pretrain.max_steps"] == "6"
    (trial,) = runs.values()  # the sweep's one trial
    best = tracked["summary"]["sweep"]["best"]
    assert trial.data.metrics["accuracy"] == pytest.approx(best["accuracy"])
    assert trial.data.tags["sweep"] == "sweep"


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B run file (a LevelDB-style log of protobuf records after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            return
        parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or a record's last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def _wandb_runs(group_prefix: str) -> dict[str, dict[str, list[float]]]:
    """{run name: {metric: values}} of the offline W&B runs whose group starts with `group_prefix`."""
    runs: dict[str, dict[str, list[float]]] = {}
    for path in Path(os.environ["WANDB_DIR"]).glob("wandb/offline-run-*/run-*.wandb"):
        name, history = "", {}
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run" and record.run.run_group.startswith(group_prefix):
                name = record.run.display_name or record.run.run_group
            elif kind == "history":
                for item in record.history.item:
                    history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
        if name:
            runs[name] = history
    return runs


def test_pretraining_and_every_trial_reach_wandb_offline(tracked: dict[str, Any]):
    runs = _wandb_runs("tracked")
    pretrain = runs.pop("tracked/pretrain")
    assert len(pretrain["loss"]) == 6 and pretrain["eval_loss"][-1] == pytest.approx(
        tracked["summary"]["pretrain"]["eval_loss"]
    )
    (trial,) = runs.values()
    assert trial["accuracy"][-1] == pytest.approx(tracked["summary"]["sweep"]["best"]["accuracy"])


def test_every_export_has_a_model_card(tracked: dict[str, Any]):
    p = tracked["summary"]["pretrain"]
    card = (tracked["run"] / "pretrain" / "export" / "README.md").read_text()
    for fact in ("bert", "WordPiece", f"{p['tokens']:,}", f"{p['eval_loss']:.4f}", "## How to load", "fill-mask"):
        assert fact in card, fact
    best = tracked["summary"]["sweep"]["best"]
    card = (tracked["run"] / "sweep" / "best_model" / "README.md").read_text()
    base = str(tracked["run"] / "pretrain" / "export")
    facts = ("text-classification", f"accuracy {best['accuracy']:.2%}", "| learning rate |", base, "## How to load")
    for fact in facts:
        assert fact in card, fact


def test_exports_truncate_long_inputs_at_their_positions(tracked: dict[str, Any]):
    from transformers import AutoTokenizer, pipeline

    long_text = "[MASK] " + "the story was moving and the acting fine " * 40
    for folder, task in (("pretrain/export", "fill-mask"), ("sweep/best_model", "text-classification")):
        where = str(tracked["run"] / folder)
        assert AutoTokenizer.from_pretrained(where).model_max_length == 32  # data.block_size: the positions
        use = pipeline(task, model=where, device="cpu")
        kwargs = {"tokenizer_kwargs": {"truncation": True}} if task == "fill-mask" else {"truncation": True}
        assert use(long_text, **kwargs)


@pytest.fixture(scope="module")
def pair_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-pair task (as MRPC/RTE): is the second text the first one, reworded?"""
    rows = ["first\tsecond\tlabel"]
    for i, text in enumerate(LABELED_TEXTS * 16):
        same = i % 2 == 0
        second = text if same else LABELED_TEXTS[(i + 1) % len(LABELED_TEXTS)]
        rows.append(f"{text} {i}\t{second} {i}\t{int(same)}")  # distinct rows: some are held out
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "search, scheduler, metric",
    [
        ("random", "asha", "macro_f1"),
        ("optuna", "none", "loss"),
        ("hyperopt", "asha", "accuracy"),
        ("random", "pbt", "loss"),
    ],
)
def test_searchers_and_schedulers_on_a_pair_task(
    tracked: dict[str, Any], pair_task: Path, search: str, scheduler: str, metric: str
):
    name = f"search-{search}-{scheduler}"
    sets = [
        f"sweep.name={name}",
        f"sweep.search={search}",
        f"sweep.scheduler={scheduler}",
        f"sweep.metric={metric}",
        "sweep.num_samples=2",
        "sweep.lr_min=0.0001",
        "sweep.lr_max=0.003",
        "sweep.weight_decays=[0.0, 0.1]",
        "sweep.warmup_ratios=[0.0, 0.2]",
        "sweep.evals_per_epoch=2",
        f"sweep.task={pair_task}",
        "sweep.text_column=first",
        "sweep.text_pair_column=second",
    ]
    sweep = pipeline.execute("sweep", small_config(tracked["root"], "tracked", *sets))["sweep"]
    trials = sweep["trials"]
    assert len(trials) == 2 and all(t["status"] == "OK" and t.get("checkpoint") for t in trials)
    assert all(0.0001 <= t["learning_rate"] <= 0.003 for t in trials)
    assert all(t["weight_decay"] in (0.0, 0.1) and t["warmup_ratio"] in (0.0, 0.2) for t in trials)
    better = min if metric == "loss" else max
    assert sweep["metric"] == metric and sweep["best"][metric] == better(t[metric] for t in trials)
    results = json.loads((tracked["run"] / name / "results.json").read_text())
    assert results["best"]["checkpoint"].endswith(f"{name}/best_model")
