"""Stage 1, corpus: read text, JSON Lines, Parquet or CSV/TSV with Ray Data into a `text` column.

The driver only lists files and peeks at the schema (for text files: at the first non-blank bytes); the
text itself is read by Ray Data tasks.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray.data

from plm_ray.config import ConfigError, DataSection
from plm_ray.store import Store

log = logging.getLogger(__name__)
NO_TEXT = "corpus {} contains no text (empty files or only blank lines)"

EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
}


def list_files(location: str, store: Store, what: str = "corpus") -> tuple[pafs.FileSystem, list[str]]:
    """Files under a local path, directory, glob, or URI (directories are walked recursively)."""
    if "://" not in location and any(c in location for c in "*?["):
        paths = sorted(p for p in glob.glob(location, recursive=True) if Path(p).is_file())
        if not paths:
            raise ConfigError(f"{what} glob matches no files: {location}")
        return pafs.LocalFileSystem(), [str(Path(p).resolve()) for p in paths]
    fs, base = store.resolve(location)
    try:
        info = fs.get_file_info(base)
    except OSError as exc:  # e.g. S3 credentials missing or refused
        raise ConfigError(f"cannot read {what} {location}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{what} path not found: {location}")
    if info.type == pafs.FileType.File:
        return fs, [base]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith("."))
    if not paths:
        raise ConfigError(f"{what} directory is empty: {location}")
    return fs, paths


def detect_format(paths: list[str], requested: str, location: str) -> tuple[str, list[str]]:
    """One format per corpus. Files with other extensions (README.md beside shards) are skipped."""
    if requested != "auto":
        return requested, paths
    if len(paths) == 1:
        return EXTENSIONS.get(Path(paths[0]).suffix.lower(), "text"), paths
    kinds: dict[str, list[str]] = {}
    for p in paths:
        kind = EXTENSIONS.get(Path(p).suffix.lower())
        if kind:
            kinds.setdefault(kind, []).append(p)
    if not kinds:
        raise ConfigError(f"corpus directory {location} has no files with a known extension ({', '.join(EXTENSIONS)})")
    if len(kinds) > 1:
        sample = ", ".join(f"{Path(v[0]).name} ({k})" for k, v in sorted(kinds.items()))
        raise ConfigError(f"corpus {location} mixes formats: {sample}; use one format or set data.format")
    skipped = len(paths) - sum(len(v) for v in kinds.values())
    if skipped:
        log.info("corpus %s: skipping %d file(s) with other extensions", location, skipped)
    ((kind, chosen),) = kinds.items()
    return kind, chosen


def _split_documents(batch: dict[str, np.ndarray], blank_line: bool) -> dict[str, list[str]]:
    """Bytes of whole files -> documents. Undecodable bytes become U+FFFD and are counted in the
    log rather than failing a multi-gigabyte run on one bad byte."""
    docs: list[str] = []
    for path, raw in zip(batch["path"], batch["bytes"], strict=True):
        text = bytes(raw).decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        if bad:
            log.warning("corpus file %s: %d undecodable byte sequence(s) replaced with U+FFFD", path, bad)
        if blank_line:
            parts = (" ".join(p.split("\n")) for p in text.replace("\r\n", "\n").split("\n\n"))
        else:
            parts = iter(text.splitlines())
        docs.extend(d.strip() for d in parts if d.strip())
    return {"text": docs}


def _clean_text(batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
    return {"text": [str(t).strip() for t in batch["text"] if t is not None and str(t).strip()]}


def _read_huggingface(cfg: DataSection) -> ray.data.Dataset:
    import datasets

    name = cfg.corpus[len("hf:") :]
    try:
        hf = datasets.load_dataset(name, cfg.hf_config or None, split=cfg.hf_split)
    except Exception as exc:  # offline: ConnectionError / LocalEntryNotFoundError / DatasetNotFoundError
        raise ConfigError(
            f"cannot load Hugging Face dataset {name!r} (offline or unknown name?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return ray.data.from_huggingface(hf)


def read_corpus(cfg: DataSection, store: Store, location: str | None = None) -> ray.data.Dataset:
    """A Ray Dataset with one `text` row per document, checked to be non-empty."""
    location = location or cfg.corpus
    if location.startswith("hf:"):
        ds = _read_huggingface(cfg)
    else:
        fs, paths = list_files(location, store)
        kind, paths = detect_format(paths, cfg.format, location)
        if kind == "text":
            # Checked by the driver (up to the first non-blank bytes), not by a Ray Data execution of its
            # own before the pipeline's; the splitter yields stripped, non-blank documents in `text`.
            if not _has_text(fs, paths):
                raise ConfigError(NO_TEXT.format(location))
            return ray.data.read_binary_files(paths, filesystem=fs, include_paths=True).map_batches(
                _split_documents, fn_kwargs={"blank_line": cfg.documents == "blank_line"}, batch_size=1
            )
        ds = _read_tabular(kind, paths, fs)
    if ds.columns() != ["text"]:
        names = ds.columns()
        if cfg.text_column not in names:
            raise ConfigError(
                f"corpus {location} has no column {cfg.text_column!r} "
                f"(columns: {', '.join(names)}); set data.text_column"
            )
        ds = (
            ds.select_columns([cfg.text_column]).rename_columns({cfg.text_column: "text"})
            if cfg.text_column != "text"
            else ds.select_columns(["text"])
        )
    ds = ds.map_batches(_clean_text)
    if not ds.take(1):
        raise ConfigError(NO_TEXT.format(location))
    return ds


def _has_text(fs: pafs.FileSystem, paths: list[str]) -> bool:
    """Whether any file holds a non-blank character; reads only up to the first one."""
    for path in paths:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                if chunk.decode("utf-8", errors="replace").strip():
                    return True
    return False


def _read_tabular(kind: str, paths: list[str], fs: pafs.FileSystem) -> ray.data.Dataset:
    if kind == "jsonl":
        return ray.data.read_json(paths, filesystem=fs)
    if kind == "parquet":
        return ray.data.read_parquet(paths, filesystem=fs)
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if kind == "tsv" else pacsv.ParseOptions()
    return ray.data.read_csv(paths, filesystem=fs, parse_options=parse)
