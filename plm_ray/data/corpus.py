"""Corpus: find the files, check they hold text, cut them into chunks and read a chunk's
documents. No Ray here: `check` runs before anything starts, and each chunk is read by the task that
tokenizes it (data/cache.py), so no driver sits on the data path.

Text and JSON Lines files are cut at byte offsets, each chunk snapped to whole lines (whole
paragraphs for `documents: blank_line`); Parquet, CSV and TSV files are one chunk each; a Hugging
Face dataset (`hf:NAME`) is read in streaming mode, one chunk per file of the dataset.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

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
LINE_FORMATS = ("text", "jsonl")  # cut at byte offsets; the others are read whole


@dataclass(frozen=True)
class Corpus:
    """A checked corpus: where it is, its files (path, size, modification time) and how to read them."""

    location: str
    kind: str  # text | jsonl | parquet | csv | tsv | hf
    files: tuple[tuple[str, int, int], ...]  # (path in the filesystem, bytes, mtime ns); () for hf:
    settings: DataSection

    def fingerprint(self) -> dict[str, object]:
        """What the tokenized cache depends on: a changed, added or removed file is another corpus."""
        s = self.settings
        return {
            "location": self.location,
            "kind": self.kind,
            "files": [list(f) for f in self.files],
            "text_column": s.text_column,
            "documents": s.documents,
            "hf": [s.hf_config, s.hf_split] if self.kind == "hf" else None,
        }


@dataclass(frozen=True)
class Chunk:
    """A slice of the corpus one task reads: bytes [start, end) of a file, a whole file (end -1), or
    file `start` of a streamed Hugging Face dataset."""

    index: int
    path: str
    start: int
    end: int


def list_files(location: str, store: Store, what: str = "corpus") -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """Files under a local path, directory, glob, or URI (directories are walked recursively)."""
    if "://" not in location and any(c in location for c in "*?["):
        paths = sorted(str(Path(p).resolve()) for p in glob.glob(location, recursive=True) if Path(p).is_file())
        if not paths:
            raise ConfigError(f"{what} glob matches no files: {location}")
        fs = pafs.LocalFileSystem()
        return fs, fs.get_file_info(paths)
    fs, base = store.resolve(location)
    try:
        info = fs.get_file_info(base)
    except OSError as exc:  # e.g. S3 credentials missing or refused
        raise ConfigError(f"cannot read {what} {location}: {str(exc).splitlines()[0]}") from exc
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{what} path not found: {location}")
    if info.type == pafs.FileType.File:
        return fs, [info]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    files = sorted((i for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(".")), key=_path)
    if not files:
        raise ConfigError(f"{what} directory is empty: {location}")
    return fs, files


def _path(info: pafs.FileInfo) -> str:
    return info.path


def detect_format(files: list[pafs.FileInfo], requested: str, location: str) -> tuple[str, list[pafs.FileInfo]]:
    """One format per corpus. Files with other extensions (README.md beside shards) are skipped."""
    if requested != "auto":
        return requested, files
    if len(files) == 1:
        return EXTENSIONS.get(Path(files[0].path).suffix.lower(), "text"), files
    kinds: dict[str, list[pafs.FileInfo]] = {}
    for f in files:
        kind = EXTENSIONS.get(Path(f.path).suffix.lower())
        if kind:
            kinds.setdefault(kind, []).append(f)
    if not kinds:
        raise ConfigError(f"corpus directory {location} has no files with a known extension ({', '.join(EXTENSIONS)})")
    if len(kinds) > 1:
        sample = ", ".join(f"{Path(v[0].path).name} ({k})" for k, v in sorted(kinds.items()))
        raise ConfigError(f"corpus {location} mixes formats: {sample}; use one format or set data.format")
    skipped = len(files) - sum(len(v) for v in kinds.values())
    if skipped:
        log.info("corpus %s: skipping %d file(s) with other extensions", location, skipped)
    ((kind, chosen),) = kinds.items()
    return kind, chosen


def check_corpus(cfg: DataSection, store: Store, location: str) -> Corpus:
    """Find the corpus and read just enough of it to know it holds text in the configured column."""
    if location.startswith("hf:"):
        _check_huggingface(cfg, location)
        return Corpus(location, "hf", (), cfg)
    fs, infos = list_files(location, store)
    kind, infos = detect_format(infos, cfg.format, location)
    files = tuple((i.path, i.size, i.mtime_ns or 0) for i in infos)
    corpus = Corpus(location, kind, files, cfg)
    if kind == "text":
        if not any(_has_text(fs, path) for path, _, _ in files):
            raise ConfigError(NO_TEXT.format(location))
    else:
        _check_column(corpus, fs)
    return corpus


def _has_text(fs: pafs.FileSystem, path: str) -> bool:
    """Whether the file holds a non-blank character; reads only up to the first one."""
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            if chunk.decode("utf-8", errors="replace").strip():
                return True
    return False


def _check_column(corpus: Corpus, fs: pafs.FileSystem) -> None:
    """The first file's columns hold the text column, its first MiB (or first batch of rows) reads
    without error, and some file has a non-blank text in the column (looked for up to the first)."""
    column = corpus.settings.text_column
    names = _columns(corpus, fs, corpus.files[0][0])
    if column not in names:
        raise ConfigError(
            f"corpus {corpus.location} has no column {column!r} (columns: {', '.join(names)}); set data.text_column"
        )
    for index, (path, size, _) in enumerate(corpus.files):
        head = Chunk(index, path, 0, min(size, 1 << 20) if corpus.kind in LINE_FORMATS else -1)
        try:
            found = list(read_chunk(corpus, head, fs)) if index == 0 else next(read_chunk(corpus, head, fs), None)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if found:
            return
    raise ConfigError(NO_TEXT.format(corpus.location))


def _columns(corpus: Corpus, fs: pafs.FileSystem, path: str) -> list[str]:
    try:
        if corpus.kind == "parquet":
            import pyarrow.parquet as pq

            with fs.open_input_file(path) as f:
                return pq.read_schema(f).names
        size = fs.get_file_info(path).size
        head = _line_aligned(fs, Chunk(0, path, 0, min(size, 1 << 20)), blank_line=False)  # whole lines
        if corpus.kind == "jsonl":
            first = next((line for line in head.splitlines() if line.strip()), "{}")
            return list(json.loads(first))
        return head.splitlines()[0].split("\t" if corpus.kind == "tsv" else ",") if head else []
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot read corpus file {path} as {corpus.kind}: {str(exc).splitlines()[0]}") from exc


def _check_huggingface(cfg: DataSection, location: str) -> None:
    try:
        import datasets

        stream = datasets.load_dataset(location[3:], cfg.hf_config or None, split=cfg.hf_split, streaming=True)
        names = list(stream.features or {})
    except Exception as exc:  # offline: ConnectionError / LocalEntryNotFoundError / DatasetNotFoundError
        first = str(exc).splitlines()[0] if str(exc) else ""
        name = location[3:]
        raise ConfigError(
            f"cannot load Hugging Face dataset {name!r} (offline or unknown name?): {type(exc).__name__}: {first}"
        ) from exc
    if names and cfg.text_column not in names:
        raise ConfigError(
            f"corpus {location} has no column {cfg.text_column!r} (columns: {', '.join(names)}); set data.text_column"
        )


def chunks(corpus: Corpus, chunk_bytes: int) -> list[Chunk]:
    """The corpus in the order it is read: each line-format file cut every `chunk_bytes`, other
    files whole, a Hugging Face dataset one chunk per file it is stored in."""
    if corpus.kind == "hf":
        import datasets

        s = corpus.settings
        stream = datasets.load_dataset(corpus.location[3:], s.hf_config or None, split=s.hf_split, streaming=True)
        return [Chunk(i, corpus.location, i, stream.n_shards) for i in range(stream.n_shards)]
    out: list[Chunk] = []
    for path, size, _ in corpus.files:
        if corpus.kind not in LINE_FORMATS:
            out.append(Chunk(len(out), path, 0, -1))
            continue
        for start in range(0, max(size, 1), chunk_bytes):
            out.append(Chunk(len(out), path, start, min(start + chunk_bytes, size)))
    return out


def read_chunk(corpus: Corpus, chunk: Chunk, fs: pafs.FileSystem) -> Iterator[str]:
    """The chunk's documents, stripped and non-blank, in file order."""
    if corpus.kind == "hf":
        yield from _huggingface_documents(corpus, chunk)
    elif corpus.kind in LINE_FORMATS:
        text = _line_aligned(fs, chunk, corpus.settings.documents == "blank_line")
        if corpus.kind == "text":
            yield from _text_documents(text, corpus.settings.documents == "blank_line")
        else:
            yield from _jsonl_documents(text, chunk.path, corpus.settings.text_column)
    else:
        yield from _table_documents(corpus, chunk.path, fs)


def _line_aligned(fs: pafs.FileSystem, chunk: Chunk, blank_line: bool) -> str:
    """Bytes [start, end) of the file extended to whole lines (whole paragraphs with `blank_line`): a
    chunk starts after the first separator at or past `start` and ends after the first one at or past
    `end`, so consecutive chunks share nothing and miss nothing. Undecodable bytes become U+FFFD and
    are counted in the log rather than failing a multi-gigabyte run on one bad byte."""
    sep = b"\n\n" if blank_line else b"\n"
    with fs.open_input_file(chunk.path) as f:
        size = f.size()
        begin = 0 if chunk.start == 0 else _after_separator(f, chunk.start - len(sep) + 1, size, sep)
        end = size if chunk.end >= size else _after_separator(f, chunk.end - len(sep) + 1, size, sep)
        data = f.read_at(max(0, end - begin), begin) if end > begin else b""
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad:
        log.warning("corpus file %s: %d undecodable byte sequence(s) replaced with U+FFFD", chunk.path, bad)
    return text


def _after_separator(f: pafs.NativeFile, position: int, size: int, sep: bytes) -> int:
    """The offset just past the first `sep` that starts at or after `position` (the file's end if none)."""
    step = 1 << 16
    while position < size:
        window = f.read_at(min(step + len(sep), size - position), position)
        found = window.find(sep)
        if found >= 0:
            return position + found + len(sep)
        position += step
    return size


def _text_documents(text: str, blank_line: bool) -> Iterator[str]:
    if blank_line:
        parts = (" ".join(p.split("\n")) for p in text.replace("\r\n", "\n").split("\n\n"))
    else:
        parts = iter(text.splitlines())
    return (d.strip() for d in parts if d.strip())


def _jsonl_documents(text: str, path: str, column: str) -> Iterator[str]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line).get(column)
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"corpus file {path}: line {number} of its chunk is not a JSON object ({exc})") from exc
        if value is not None and str(value).strip():
            yield str(value).strip()


def _table_documents(corpus: Corpus, path: str, fs: pafs.FileSystem) -> Iterator[str]:
    """A Parquet or CSV/TSV file's text column, batch by batch (TSV, GLUE style, has no quoting)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    column = corpus.settings.text_column
    with fs.open_input_file(path) as f:
        if corpus.kind == "parquet":
            batches = pq.ParquetFile(f).iter_batches(columns=[column])
        else:
            parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if corpus.kind == "tsv" else None
            convert = pacsv.ConvertOptions(include_columns=[column], column_types={column: "string"})
            batches = pacsv.open_csv(f, parse_options=parse, convert_options=convert)
        for batch in batches:
            for value in batch.column(0).to_pylist():
                if value is not None and str(value).strip():
                    yield str(value).strip()


def _huggingface_documents(corpus: Corpus, chunk: Chunk) -> Iterator[str]:
    import datasets

    s = corpus.settings
    stream = datasets.load_dataset(corpus.location[3:], s.hf_config or None, split=s.hf_split, streaming=True)
    for row in stream.shard(num_shards=chunk.end, index=chunk.start):
        value = row.get(s.text_column)
        if value is not None and str(value).strip():
            yield str(value).strip()


def sample_documents(corpus: Corpus, store: Store, n_docs: int, batch: int = 1000) -> Iterator[list[str]]:
    """The first `n_docs` documents in corpus order, in batches (what a tokenizer is trained on)."""
    fs = store.resolve(corpus.location)[0] if corpus.kind != "hf" else None
    taken, pending = 0, []
    for chunk in chunks(corpus, 64 << 20):
        for doc in read_chunk(corpus, chunk, fs):
            pending.append(doc)
            taken += 1
            if len(pending) == batch or taken == n_docs:
                yield pending
                pending = []
            if taken == n_docs:
                return
    if pending:
        yield pending
