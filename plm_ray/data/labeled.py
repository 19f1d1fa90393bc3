"""Labeled data for the sweep: read once on the driver, checked, split, and written to the store as
Parquet so every trial on every node reads the same validated rows."""

from __future__ import annotations

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
    fs, paths = list_files(location, store, "labeled data")
    tables = []
    for path in paths:
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


def _columns(table: pa.Table, cfg: SweepSection, where: str) -> tuple[list[str], pa.ChunkedArray]:
    for key, column in (("sweep.text_column", cfg.text_column), ("sweep.label_column", cfg.label_column)):
        if column not in table.column_names:
            raise ConfigError(
                f"labeled data {where} has no column {column!r} (columns: {', '.join(table.column_names)}); set {key}"
            )
    if len(table) == 0:
        raise ConfigError(f"labeled data {where} is empty")
    texts = [str(t) if t is not None else "" for t in table.column(cfg.text_column).to_pylist()]
    return texts, table.column(cfg.label_column)


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


def read_labeled(cfg: SweepSection, store: Store, task: str, validation: str) -> dict[str, Any]:
    """Read and validate the labeled data (nothing is written): texts, label ids and the label names."""
    if task.startswith("hf:"):
        train = _hf_table(task[3:], cfg.hf_config, "train")
        valid = _hf_table(task[3:], cfg.hf_config, validation or "validation")
    else:
        train = read_table(task, cfg.format, store)
        valid = read_table(validation, cfg.format, store) if validation else None
    texts, labels = _columns(train, cfg, task)
    names = None
    if cfg.label_map and not (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)):
        names = sorted({str(v) for v in labels.to_pylist()})
    y = _label_ids(labels, cfg, task, names)
    if valid is not None:
        v_texts, v_labels = _columns(valid, cfg, validation)
        v_y = _label_ids(v_labels, cfg, validation, names)
    else:  # deterministic hold-out by content hash
        held = np.array([is_eval_document(t, cfg.validation_fraction) for t in texts])
        v_texts, v_y = [t for t, h in zip(texts, held, strict=True) if h], y[held]
        texts, y = [t for t, h in zip(texts, held, strict=True) if not h], y[~held]
        if not v_texts:
            raise ConfigError(
                f"labeled data {task}: the held-out validation split is empty; "
                "raise sweep.validation_fraction or set sweep.validation"
            )
    num_labels = cfg.num_labels or (len(names) if names else int(max(y.max(), v_y.max())) + 1)
    for where, ids in ((task, y), (validation or f"{task} (held out)", v_y)):
        bad = ids[(ids < 0) | (ids >= num_labels)]
        if len(bad):
            raise ConfigError(f"labeled data {where}: label {int(bad[0])} is outside 0..{num_labels - 1}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ConfigError(f"labeled data {task} has a single class (label {int(classes[0])}); need at least 2")
    id2label = {i: (names[i] if names else f"LABEL_{i}") for i in range(num_labels)}
    return {"train": (texts, y), "validation": (v_texts, v_y), "id2label": id2label}


def prepare_labeled(cfg: SweepSection, store: Store, run: str, task: str, validation: str) -> dict[str, Any]:
    """Validate, split and store the labeled data; returns what trials need to know about it."""
    data = read_labeled(cfg, store, task, validation)
    for split in ("train", "validation"):
        split_texts, split_y = data[split]
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"text": split_texts, "label": split_y}), sink)
        store.write_bytes(sink.getvalue().to_pybytes(), run, cfg.name, "data", f"{split}.parquet")
    return {
        "num_labels": len(data["id2label"]),
        "id2label": data["id2label"],
        "train_rows": len(data["train"][0]),
        "validation_rows": len(data["validation"][0]),
    }


def load_split(store: Store, run: str, sweep_name: str, split: str) -> tuple[list[str], np.ndarray]:
    with store.fs.open_input_file(store.path(run, sweep_name, "data", f"{split}.parquet")) as f:
        table = pq.read_table(f)
    return [str(t) for t in table.column("text").to_pylist()], table.column("label").to_numpy()
