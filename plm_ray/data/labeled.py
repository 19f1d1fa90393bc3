"""Labeled data for the sweep: read once on the driver (the sweep's check), checked, split, and
written to the store as Parquet so every trial on every node reads the same validated rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from plm_ray.config import ConfigError, SweepSection
from plm_ray.data.corpus import EXTENSIONS, list_files
from plm_ray.data.packing import is_eval_document
from plm_ray.store import Store


def read_table(location: str, fmt: str, store: Store) -> pa.Table:
    fs, files = list_files(location, store, "labeled data")
    tables = []
    for path in (f.path for f in files):
        kind = fmt if fmt != "auto" else EXTENSIONS.get(Path(path).suffix.lower())
        if kind not in ("csv", "tsv", "jsonl", "parquet"):
            raise ConfigError(
                f"labeled file {path}: unknown format; use .csv, .tsv, .jsonl or .parquet or set sweep.format"
            )
        try:
            with fs.open_input_file(path) as f:
                if kind == "parquet":
                    tables.append(pq.read_table(f))
                elif kind == "jsonl":
                    tables.append(pajson.read_json(f))
                else:  # TSV (GLUE style) has no quoting; CSV follows RFC 4180 quoting
                    parse = (
                        pacsv.ParseOptions(delimiter="\t", quote_char=False) if kind == "tsv" else pacsv.ParseOptions()
                    )
                    tables.append(pacsv.read_csv(f, parse_options=parse))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"cannot read labeled file {path}: {str(exc).splitlines()[0]}") from exc
    return pa.concat_tables(tables, promote_options="default")


def _hf_table(name: str, config: str, split: str) -> pa.Table:
    import datasets

    try:
        return datasets.load_dataset(name, config or None, split=split).data.table
    except Exception as exc:  # offline / unknown dataset
        raise ConfigError(
            f"cannot load Hugging Face dataset {name!r} split {split!r} (offline or unknown name?): "
            f"{type(exc).__name__}"
        ) from exc


@dataclass
class Rows:
    """Labeled rows: texts, the second texts of sentence pairs (None for single texts), label ids."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray

    def select(self, keep: np.ndarray) -> Rows:
        chosen = [i for i, k in enumerate(keep) if k]
        pairs = [self.pairs[i] for i in chosen] if self.pairs is not None else None
        return Rows([self.texts[i] for i in chosen], pairs, self.labels[keep])


def _text(table: pa.Table, column: str) -> list[str]:
    return [str(t) if t is not None else "" for t in table.column(column).to_pylist()]


def _columns(table: pa.Table, cfg: SweepSection, where: str) -> tuple[list[str], list[str] | None, pa.ChunkedArray]:
    columns = [("sweep.text_column", cfg.text_column), ("sweep.label_column", cfg.label_column)]
    if cfg.text_pair_column:
        columns.append(("sweep.text_pair_column", cfg.text_pair_column))
    for key, column in columns:
        if column not in table.column_names:
            raise ConfigError(
                f"labeled data {where} has no column {column!r} (columns: {', '.join(table.column_names)}); set {key}"
            )
    if len(table) == 0:
        raise ConfigError(f"labeled data {where} is empty")
    pairs = _text(table, cfg.text_pair_column) if cfg.text_pair_column else None
    return _text(table, cfg.text_column), pairs, table.column(cfg.label_column)


def _label_ids(labels: pa.ChunkedArray, cfg: SweepSection, where: str, names: list[str] | None) -> np.ndarray:
    """Integer labels pass through; string labels need `sweep.label_map` (mapped via `names`)."""
    if labels.null_count:
        raise ConfigError(f"labeled data {where}: column {cfg.label_column!r} has {labels.null_count} empty value(s)")
    if pa.types.is_integer(labels.type):
        return labels.to_numpy().astype(np.int64)
    if pa.types.is_floating(labels.type):
        values = labels.to_numpy()
        bad = values[values != np.round(values)]
        if len(bad) == 0:
            return values.astype(np.int64)
        raise ConfigError(f"labeled data {where}: column {cfg.label_column!r} has non-integer label {float(bad[0])!r}")
    values = [str(v) for v in pc.cast(labels, pa.string()).to_pylist()]
    if names is None:
        raise ConfigError(
            f"labeled data {where}: column {cfg.label_column!r} has non-integer label {values[0]!r}; "
            "use integer labels 0..K-1 or --set sweep.label_map=true"
        )
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise ConfigError(f"labeled data {where}: label {unknown[0]!r} does not occur in the training data")
    return np.array([index[v] for v in values], dtype=np.int64)


def _label_names(labels: pa.ChunkedArray, cfg: SweepSection) -> list[str] | None:
    """String labels sorted into names (with sweep.label_map); None where labels are numbers already."""
    if cfg.label_map and not (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)):
        return sorted({str(v) for v in labels.to_pylist()})
    return None


def _held_out(train: Rows, cfg: SweepSection, task: str) -> tuple[Rows, Rows]:
    """A deterministic hold-out by content hash of each row's text (and pair)."""
    keys = train.texts if train.pairs is None else [f"{t}\t{p}" for t, p in zip(train.texts, train.pairs, strict=True)]
    held = np.array([is_eval_document(k, cfg.validation_fraction) for k in keys])
    if not held.any():
        raise ConfigError(
            f"labeled data {task}: the held-out validation split is empty; "
            "raise sweep.validation_fraction or set sweep.validation"
        )
    return train.select(~held), train.select(held)


def _check_labels(train: Rows, valid: Rows, num_labels: int, task: str, validation: str) -> None:
    for where, ids in ((task, train.labels), (validation or f"{task} (held out)", valid.labels)):
        bad = ids[(ids < 0) | (ids >= num_labels)]
        if len(bad):
            raise ConfigError(f"labeled data {where}: label {int(bad[0])} is outside 0..{num_labels - 1}")
    classes = np.unique(train.labels)
    if len(classes) < 2:
        raise ConfigError(f"labeled data {task} has a single class (label {int(classes[0])}); need at least 2")


def read_labeled(cfg: SweepSection, store: Store, task: str, validation: str) -> dict[str, Any]:
    """Read and check the labeled data (nothing is written): its rows, split, and the label names."""
    if task.startswith("hf:"):
        train_table = _hf_table(task[3:], cfg.hf_config, "train")
        valid_table = _hf_table(task[3:], cfg.hf_config, validation or "validation")
    else:
        train_table = read_table(task, cfg.format, store)
        valid_table = read_table(validation, cfg.format, store) if validation else None
    texts, pairs, labels = _columns(train_table, cfg, task)
    names = _label_names(labels, cfg)
    train = Rows(texts, pairs, _label_ids(labels, cfg, task, names))
    if valid_table is not None:
        v_texts, v_pairs, v_labels = _columns(valid_table, cfg, validation)
        valid = Rows(v_texts, v_pairs, _label_ids(v_labels, cfg, validation, names))
    else:
        train, valid = _held_out(train, cfg, task)
    num_labels = cfg.num_labels or (len(names) if names else int(max(train.labels.max(), valid.labels.max())) + 1)
    _check_labels(train, valid, num_labels, task, validation)
    id2label = {i: (names[i] if names else f"LABEL_{i}") for i in range(num_labels)}
    return {"train": train, "validation": valid, "id2label": id2label}


def store_labeled(data: dict[str, Any], store: Store, run: str, sweep_name: str) -> dict[str, Any]:
    """Write the checked rows (read_labeled's) into the sweep's folder, where every trial on every
    node reads them; returns what trials need to know about them."""
    for split in ("train", "validation"):
        rows: Rows = data[split]
        columns = {"text": rows.texts, "label": rows.labels}
        if rows.pairs is not None:
            columns["pair"] = rows.pairs
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), sink)
        store.write_bytes(sink.getvalue().to_pybytes(), run, sweep_name, "data", f"{split}.parquet")
    return {
        "num_labels": len(data["id2label"]),
        "id2label": data["id2label"],
        "train_rows": len(data["train"].texts),
        "validation_rows": len(data["validation"].texts),
    }


def load_split(store: Store, run: str, sweep_name: str, split: str) -> Rows:
    with store.fs.open_input_file(store.path(run, sweep_name, "data", f"{split}.parquet")) as f:
        table = pq.read_table(f)
    pairs = _text(table, "pair") if "pair" in table.column_names else None
    return Rows(_text(table, "text"), pairs, table.column("label").to_numpy())
