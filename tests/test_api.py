"""plm-ray from Python: the API's configuration, and the example script that pre-trains once and
sweeps several tasks (one of them sentence pairs) on real Ray Train and Tune."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from plm_ray import api

from .conftest import LABELED_TEXTS, SMALL

REPO = Path(__file__).resolve().parent.parent


def test_load_config_takes_overrides_as_values_and_refuses_bad_ones():
    cfg = api.load_config(REPO / "pipelines/configs/wiki_sst2.yaml", {"run.name": "mine", "sweep.epochs": [1, 2]})
    assert cfg.run.name == "mine" and cfg.sweep.epochs == [1, 2]
    with pytest.raises(api.ConfigError, match="pretrain.max_steps"):
        api.load_config(None, {"pretrain.max_steps": -5})


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_the_example_script_pretrains_once_and_sweeps_each_task(tmp_path: Path):
    single, pairs = tmp_path / "single.tsv", tmp_path / "pairs.tsv"
    texts = [f"{t} {i}" for i, t in enumerate(LABELED_TEXTS * 12)]  # distinct: some land in the held-out split
    single.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)))
    rows = "".join(f"{t}\t{t} again\t{i % 2}\n" for i, t in enumerate(texts))
    pairs.write_text("sentence\tsecond\tlabel\n" + rows)
    spec = importlib.util.spec_from_file_location("sweep_many", REPO / "pipelines" / "sweep_many.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sets = [x for s in [*SMALL, f"store.root={tmp_path}", "sweep.learning_rates=[0.001]"] for x in ("--set", s)]
    table = script.main([*sets, "--run", "many", "--task", f"single={single}", "--task", f"pairs={pairs}:second"])
    assert [row["task"] for row in table] == ["single", "pairs"]
    assert all(0 <= row["accuracy"] <= 1 and row["model"].endswith(f"{row['task']}/best_model") for row in table)
    written = list(csv.DictReader((tmp_path / "many" / "tasks.csv").open()))
    assert [row["task"] for row in written] == ["single", "pairs"]
    assert (tmp_path / "many" / "pretrain" / "result.json").exists()  # pre-trained once, for both
    overrides = dict(s.split("=", 1) for s in SMALL) | {"store.root": tmp_path, "run.name": "many"}
    overrides |= {"sweep.name": "single", "sweep.task": single, "sweep.learning_rates": [0.001]}
    summary = api.sweep(api.load_config(None, overrides), resume=True)
    assert summary.best is not None and summary.best.accuracy == table[0]["accuracy"]  # the finished sweep, kept
    assert summary.export and summary.export.endswith("many/pretrain/export")
