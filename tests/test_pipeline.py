"""The real thing, small: the prepare, pre-training and sweep stages on Ray Train workers with
DeepSpeed ZeRO engines and Ray Tune trials, and what they leave in the store."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, BertConfig

from plm_ray import pipeline
from plm_ray.cli import main

from .conftest import LABELED_TEXTS, small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(scope="module")
def repeated_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nearly the same paragraph over and over: every batch is (nearly) the same batch. A number
    varies so the content-hash split puts some documents in each split."""
    path = tmp_path_factory.mktemp("corpus") / "repeated.txt"
    line = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat number {} .\n"
    path.write_text("".join(line.format(i % 20) for i in range(400)))
    return path


def pretrain_on(corpus: Path, tmp_path: Path, run: str, *extra: str) -> dict[str, Any]:
    """Pre-train the small config on `corpus` (a tiny vocabulary, a third held out); its result."""
    sets = [f"data.corpus={corpus}", "data.eval_fraction=0.3", "tokenizer.vocab_size=100", "tokenizer.min_frequency=1"]
    return pipeline.execute("pretrain", small_config(tmp_path, run, *sets, *extra))["pretrain"]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> dict[str, Any]:
    """`run` on the embedded data, then beside its sweep a sweep without pre-training (3 evaluations
    an epoch) and one on string labels from a quoted CSV, then the report again."""
    root = tmp_path_factory.mktemp("store")
    called = time.time()
    summary = pipeline.execute("run", small_config(root, "full"))
    random = small_config(root, "full", "sweep.model=random", "sweep.name=sweep-random", "sweep.evals_per_epoch=3")
    baseline = pipeline.execute("sweep", random)["sweep"]
    rows = [f'"{t}, really {i}",{["bad", "fine", "good"][i % 3]}' for i, t in enumerate(LABELED_TEXTS * 20)]
    (root / "reviews.csv").write_text("review,verdict\n" + "\n".join(rows) + "\n")
    labels = [f"sweep.task={root / 'reviews.csv'}", "sweep.text_column=review", "sweep.label_column=verdict"]
    pipeline.execute("sweep", small_config(root, "full", *labels, "sweep.label_map=true", "sweep.name=sweep-labels"))
    assert main(["report", "full", "--root", str(root)]) == 0
    return {"root": root / "full", "summary": summary, "baseline": baseline, "called": called}


def test_run_writes_summary_pretrain_and_sweep(full: dict[str, Any]):
    summary, root = full["summary"], full["root"]
    assert json.loads((root / "summary.json").read_text())["pretrain"] == json.loads(json.dumps(summary["pretrain"]))
    p = summary["pretrain"]
    assert {
        "steps",
        "tokens",
        "tokens_per_second",
        "wall_seconds",
        "final_loss",
        "eval_loss",
        "export",
        "cache",
    } <= set(p)
    assert p["zero_stage"] == 2  # auto, on two workers
    # start-up: from the command's start to the first optimizer step, inside the command
    assert 0 < p["startup_seconds"] < time.time() - full["called"]


def test_sweep_trials_results_table_and_best_model(full: dict[str, Any]):
    sweep, root = full["summary"]["sweep"], full["root"]
    trials = sweep["trials"]
    assert len(trials) == 2 and {t["learning_rate"] for t in trials} == {0.0005, 0.002}
    for t in trials:
        assert 0 <= t["accuracy"] <= 1 and 0 <= t["macro_f1"] <= 1 and Path(t["checkpoint"]).is_dir()
        assert t["trial_id"].endswith(f"_lr={t['learning_rate']:.3g}_bs=32"), t["trial_id"]
        assert t["history"][-1]["examples_per_second"] > 0
    with open(root / "sweep" / "results.csv") as f:
        assert [bool(r["checkpoint"]) for r in csv.DictReader(f)] == [True, True]
    best = Path(sweep["best"]["checkpoint"])
    assert best == root / "sweep" / "best_model"
    assert AutoModelForSequenceClassification.from_pretrained(best).config.num_labels == 2
    assert (best / "tokenizer.json").is_file()


def test_pretraining_leaves_its_curves(full: dict[str, Any]):
    assert list((full["root"] / "pretrain" / "tensorboard").glob("events.out.tfevents.*"))
    history = json.loads((full["root"] / "pretrain" / "history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_a_completed_run_is_not_overwritten_by_accident(full: dict[str, Any], capsys: pytest.CaptureFixture[str]):
    root = full["root"].parent
    assert main(["pretrain", "--set", f"store.root={root}", "--set", "run.name=full"]) == 2
    assert "already completed pretrain" in capsys.readouterr().err


def test_baseline_sweep_sits_beside_and_keeps_each_trials_best_point(full: dict[str, Any]):
    """Without pre-training (sweep.model=random), 3 evaluations an epoch: each trial keeps its best
    point, wherever in the epoch it fell, and its row describes that checkpoint."""
    baseline, root = full["baseline"], full["root"]
    assert baseline["model"] == "random" and (root / "sweep-random" / "best_model" / "config.json").is_file()
    for t in baseline["trials"]:
        assert [e["epoch"] for e in t["history"]] == [0.3333, 0.6667, 1.0] and t["epochs_run"] == 1
        point = next(e for e in t["history"] if e["epoch"] == t["best_epoch"])
        assert t["accuracy"] == point["accuracy"] == max(e["accuracy"] for e in t["history"])
        assert json.loads((Path(t["checkpoint"]) / "plm_ray.json").read_text())["epoch"] == t["best_epoch"]


def test_string_labels_travel_with_the_model(full: dict[str, Any]):
    labeled = AutoModelForSequenceClassification.from_pretrained(full["root"] / "sweep-labels" / "best_model")
    assert labeled.config.id2label == {0: "bad", 1: "fine", 2: "good"}
    assert labeled.config.label2id == {"bad": 0, "fine": 1, "good": 2}


def test_the_report_shows_every_sweep(full: dict[str, Any]):
    report_dir = full["root"] / "report"
    report = (report_dir / "report.md").read_text()
    for name in ("sweep", "sweep-random", "sweep-labels"):
        assert f"## Sweep `{name}`" in report and f"]({name}_accuracy.png)" in report
        assert (report_dir / f"{name}_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report_dir / "pretrain_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.count("| ★ |") == 3 and "0.00e+00" not in report


@pytest.mark.parametrize(("stage", "arch"), [(0, "bert"), (2, "bert"), (3, "bert"), (3, "xlm"), (2, "convbert")])
def test_two_workers_train_and_export_under_every_zero_stage(
    tmp_path: Path, repeated_corpus: Path, stage: int, arch: str
):
    sets = [
        f"pretrain.zero_stage={stage}",
        f"model.arch={arch}",
        "pretrain.max_steps=12",
        "pretrain.learning_rate=0.003",
    ]
    result = pretrain_on(repeated_corpus, tmp_path, f"zero{stage}", *sets)
    assert result["steps"] == 12 and result["zero_stage"] == stage
    history = [
        h["loss"]
        for h in json.loads((tmp_path / f"zero{stage}" / "pretrain" / "history.json").read_text())
        if "loss" in h
    ]
    assert len(history) == 12 and sum(history[-3:]) < 0.9 * sum(history[:3]), history
    assert result["export_max_abs_diff"] < 1e-4
    export = Path(result["export"])
    assert (export / "model.safetensors").is_file() and (export / "tokenizer.json").is_file()
    model = AutoModelForMaskedLM.from_pretrained(export)
    assert all(p.abs().sum() > 0 for p in model.parameters()), "export holds empty (unconsolidated) weights"
    shards = sorted(p.name for p in (Path(result["checkpoint"]) / "state").iterdir())
    if stage > 0:  # each rank's ZeRO optimizer shard made it into the one checkpoint
        assert sum("optim_states" in s for s in shards) == 2, shards


def test_one_worker_runs_zero_stage_0_unless_asked(tmp_path: Path, repeated_corpus: Path):
    """ZeRO stage auto (the default): 2 across workers, 0 on one worker, which has nothing to partition."""
    result = pretrain_on(repeated_corpus, tmp_path, "one", "pretrain.num_workers=1", "pretrain.max_steps=6")
    assert result["zero_stage"] == 0 and result["steps"] == 6 and result["export_max_abs_diff"] < 1e-4
    assert not [p for p in (Path(result["checkpoint"]) / "state").iterdir() if "optim_states" in p.name]


def test_time_budget_ends_training_with_the_rate_decayed(tmp_path: Path, repeated_corpus: Path):
    """Two workers, a step limit far out of reach: the 15-second budget ends training, and the LR
    schedule, driven by time, has decayed to zero by then."""
    result = pretrain_on(
        repeated_corpus, tmp_path, "budget", "pretrain.max_steps=100000", "pretrain.budget_minutes=0.25"
    )
    assert result["stopped_by"] == "budget_minutes" and 3 < result["steps"] < 100000
    assert 15.0 <= result["train_seconds"] < 30.0
    rates = [h["lr"] for h in json.loads((tmp_path / "budget" / "pretrain" / "history.json").read_text()) if "lr" in h]
    peak = rates.index(max(rates))
    assert peak < len(rates) // 4 and rates[-1] < 0.05 * rates[peak], rates
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1 :], strict=False)), "the decay never rises"


def test_sweep_bad_checkpoint_and_block_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base = ["--set", f"store.root={tmp_path}", "--set", "run.name=bad"]
    assert main(["sweep", *base, "--set", f"sweep.model={tmp_path / 'nothing'}"]) == 2
    assert f"checkpoint path not found: {tmp_path / 'nothing'}" in capsys.readouterr().err
    (tmp_path / "notackpt").mkdir()
    assert main(["sweep", *base, "--overwrite", "--set", f"sweep.model={tmp_path / 'notackpt'}"]) == 2
    assert "not a plm-ray/Hugging Face checkpoint (no config.json)" in capsys.readouterr().err
    short = tmp_path / "short"
    BertConfig(max_position_embeddings=16).save_pretrained(short)
    assert main(["pretrain", *base, "--overwrite", "--set", f"model.init_from={short}"]) == 2
    assert "data.block_size = 64 is larger than the 16 positions of model" in capsys.readouterr().err


def test_more_workers_than_the_cluster_has_is_refused_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base = ["--set", f"store.root={tmp_path}", "--set", "run.name=big"]
    assert main(["pretrain", *base, "--set", "pretrain.num_workers=3"]) == 2
    assert "pretrain.num_workers = 3 x cpus_per_worker = 1 needs 3 CPUs, but the Ray cluster has 2" in (
        capsys.readouterr().err
    )
    assert main(["pretrain", *base, "--set", "pretrain.use_gpu=true"]) == 2
    assert "with use_gpu needs 2 GPUs, but the Ray cluster has 0" in capsys.readouterr().err
    BertConfig().save_pretrained(tmp_path / "ckpt")  # a checkpoint, so the sweep's inputs pass
    assert main(["sweep", *base, "--set", f"sweep.model={tmp_path / 'ckpt'}", "--set", "sweep.cpus_per_trial=4"]) == 2
    assert "fit no node; the largest has 2 CPUs, 0 GPUs" in capsys.readouterr().err
    assert not (tmp_path / "big").exists() and not (tmp_path / "cache").exists(), "a refused command wrote"


def test_overwrite_with_a_bad_input_keeps_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """--overwrite deletes only after every input passed its checks."""
    (tmp_path / "keep" / "pretrain").mkdir(parents=True)
    (tmp_path / "keep" / "pretrain" / "result.json").write_text("{}")
    base = ["--set", f"store.root={tmp_path}", "--set", "run.name=keep", "--overwrite"]
    assert main(["pretrain", *base, "--set", f"data.corpus={tmp_path / 'typo'}"]) == 2
    assert f"corpus path not found: {tmp_path / 'typo'}" in capsys.readouterr().err
    assert main(["sweep", *base, "--set", f"sweep.task={tmp_path / 'typo.tsv'}"]) == 2
    assert (tmp_path / "keep" / "pretrain" / "result.json").read_text() == "{}"
