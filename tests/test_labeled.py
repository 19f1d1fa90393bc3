"""Labeled-data validation for the sweep: each bad input is one clear error naming file and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from plm_ray.config import ConfigError, StoreSection, SweepSection
from plm_ray.data.labeled import load_split, read_labeled, store_labeled
from plm_ray.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(StoreSection(root=str(tmp_path / "store")))


def prepare_labeled(cfg: SweepSection, store: Store, run: str, task: str, validation: str) -> dict:
    """What the sweep stage does: read and check (its check), then store the rows (its run)."""
    return store_labeled(read_labeled(cfg, store, task, validation), store, run, cfg.name)


def _write(path: Path, header: str, rows: list[str]) -> str:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_three_classes_other_columns_quoted_csv(tmp_path: Path, store: Store):
    rows = [f'"text, number {i}",{i % 3}' for i in range(60)]
    task = _write(tmp_path / "t.csv", "review,stars", rows)
    cfg = SweepSection(text_column="review", label_column="stars", validation_fraction=0.2)
    info = prepare_labeled(cfg, store, "r", task, "")
    assert info["num_labels"] == 3 and info["train_rows"] + info["validation_rows"] == 60
    rows = load_split(store, "r", "sweep", "train")
    assert rows.texts[0].startswith("text, number") and set(rows.labels) <= {0, 1, 2} and rows.pairs is None


def test_sentence_pairs_keep_their_second_text(tmp_path: Path, store: Store):
    """A pair task (MRPC, RTE, QNLI style): the second text column travels with each row, through
    the hold-out split (by the content hash of both texts) and the stored splits."""
    rows = [f"premise {i}\thypothesis {i}\t{i % 2}" for i in range(80)]
    task = _write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tlabel", rows)
    cfg = SweepSection(text_column="sentence1", text_pair_column="sentence2", validation_fraction=0.25)
    info = prepare_labeled(cfg, store, "r", task, "")
    train, valid = load_split(store, "r", "sweep", "train"), load_split(store, "r", "sweep", "validation")
    assert info["train_rows"] == len(train.pairs) and len(valid.texts) == len(valid.pairs) > 0
    assert all(
        p == t.replace("premise", "hypothesis")
        for t, p in zip(train.texts + valid.texts, train.pairs + valid.pairs, strict=True)
    )
    with pytest.raises(ConfigError, match="has no column 'sentence3'.*set sweep.text_pair_column"):
        prepare_labeled(SweepSection(text_column="sentence1", text_pair_column="sentence3"), store, "r", task, "")


def test_string_labels_with_label_map(tmp_path: Path, store: Store):
    task = _write(tmp_path / "t.tsv", "sentence\tlabel", [f"s {i}\t{'pos' if i % 2 else 'neg'}" for i in range(20)])
    dev = _write(tmp_path / "d.tsv", "sentence\tlabel", ["x\tpos", "y\tneg"])
    info = prepare_labeled(SweepSection(label_map=True), store, "r", task, dev)
    assert info["id2label"] == {0: "neg", 1: "pos"}
    with pytest.raises(ConfigError, match="non-integer label 'neg'.*sweep.label_map=true"):
        prepare_labeled(SweepSection(), store, "r", task, dev)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (
            "sentence\tstars",
            ["a\t1", "b\t0"],
            "has no column 'label' \\(columns: sentence, stars\\); set sweep.label_column",
        ),
        ("text\tlabel", ["a\t1", "b\t0"], "has no column 'sentence'"),
        ("sentence\tlabel", ["a\t1", "b\t0.5"], "non-integer label 0.5"),
        ("sentence\tlabel", ["a\t1", "b\t-1"], "label -1 is outside 0..1"),
        ("sentence\tlabel", ["a\t1", "b\t1"], "single class \\(label 1\\)"),
        ("sentence\tlabel", [], "is empty"),
    ],
)
def test_bad_labels(tmp_path: Path, store: Store, header, rows, message):
    task = _write(tmp_path / "t.tsv", header, rows)
    dev = _write(tmp_path / "d.tsv", "sentence\tlabel", ["x\t0", "y\t1"])
    with pytest.raises(ConfigError, match=message) as err:
        prepare_labeled(SweepSection(), store, "r", task, dev)
    assert "t.tsv" in str(err.value)


def test_out_of_range_with_declared_classes_and_empty_dev(tmp_path: Path, store: Store):
    task = _write(tmp_path / "t.tsv", "sentence\tlabel", ["a\t0", "b\t1", "c\t2"])
    ok_dev = _write(tmp_path / "ok.tsv", "sentence\tlabel", ["x\t0", "y\t1"])
    with pytest.raises(ConfigError, match="t.tsv: label 2 is outside 0..1"):
        prepare_labeled(SweepSection(num_labels=2), store, "r", task, ok_dev)
    with pytest.raises(ConfigError, match="held-out validation split is empty"):
        prepare_labeled(SweepSection(), store, "r", task, "")
    dev = _write(tmp_path / "d.tsv", "sentence\tlabel", [])
    with pytest.raises(ConfigError, match="d.tsv is empty"):
        prepare_labeled(SweepSection(), store, "r", task, dev)
    with pytest.raises(ConfigError, match="labeled data path not found: .*none.tsv"):
        prepare_labeled(SweepSection(), store, "r", str(tmp_path / "none.tsv"), "")
