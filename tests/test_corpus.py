"""Reading a corpus, without Ray: formats, globs, checks, chunks cut at any offset, bad bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_ray.config import ConfigError, DataSection, StoreSection
from plm_ray.data import embedded
from plm_ray.data.corpus import Corpus, check_corpus, chunks, read_chunk
from plm_ray.data.packing import is_eval_document
from plm_ray.store import Store

LINES = embedded.corpus_lines(n_docs=600, seed=3)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(StoreSection(root=str(tmp_path / "store")))


def documents(corpus: Corpus, store: Store, chunk_bytes: int = 64 << 20) -> list[str]:
    fs = store.resolve(corpus.location)[0]
    return [doc for chunk in chunks(corpus, chunk_bytes) for doc in read_chunk(corpus, chunk, fs)]


def read(location: str | Path, store: Store, **settings: str) -> list[str]:
    return documents(check_corpus(DataSection(**settings), store, str(location)), store)


def test_reads_text_jsonl_parquet_csv_tsv_and_globs(tmp_path: Path, store: Store):
    docs = ["first document here", "second, with a comma", 'third "quoted" one']
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("\n".join(docs[:2]) + "\n\n")
    (tmp_path / "t" / "b.txt").write_text(docs[2] + "\n")
    (tmp_path / "t" / "README.md").write_text("not corpus")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet")
    (tmp_path / "e.csv").write_text(
        "id,body\n" + "".join(f'{i},"{d.replace(chr(34), chr(34) * 2)}"\n' for i, d in enumerate(docs))
    )
    (tmp_path / "f.tsv").write_text("body\tid\n" + "".join(f"{d}\t{i}\n" for i, d in enumerate(docs)))
    assert read(tmp_path / "t", store) == docs
    assert read(tmp_path / "t" / "*.txt", store) == docs
    for name in ("c.jsonl", "d.parquet", "e.csv", "f.tsv"):
        assert read(tmp_path / name, store, text_column="body") == docs, name


def test_blank_line_documents(tmp_path: Path, store: Store):
    (tmp_path / "a.txt").write_text("para one\nstill one\n\npara two\n\n\npara three\n")
    assert read(tmp_path / "a.txt", store, documents="blank_line") == ["para one still one", "para two", "para three"]


@pytest.mark.parametrize("blank_line", [False, True])
def test_chunks_at_any_offset_hold_every_document_once(tmp_path: Path, store: Store, blank_line: bool):
    """Cut every 97 bytes (mid-word, mid-line, mid-paragraph), a file's chunks still read as the
    whole file does: no document lost, split or read twice."""
    separator = "\n\n" if blank_line else "\n"
    (tmp_path / "a.txt").write_text(separator.join(LINES[:200]) + separator)
    corpus = check_corpus(DataSection(documents="blank_line" if blank_line else "line"), store, str(tmp_path / "a.txt"))
    whole = documents(corpus, store)
    assert whole == LINES[:200]
    cut = chunks(corpus, 97)
    assert len(cut) > 100 and documents(corpus, store, 97) == whole


def test_bad_corpus_inputs(tmp_path: Path, store: Store):
    with pytest.raises(ConfigError, match="corpus path not found: .*missing"):
        check_corpus(DataSection(), store, str(tmp_path / "missing"))
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(ConfigError, match="contains no text"):
        check_corpus(DataSection(), store, str(tmp_path / "empty.txt"))
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "a.txt").write_text("x\n")
    (tmp_path / "mix" / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(ConfigError, match="mixes formats"):
        check_corpus(DataSection(), store, str(tmp_path / "mix"))
    (tmp_path / "c.jsonl").write_text('{"body": "y"}\n')
    with pytest.raises(ConfigError, match="has no column 'text' \\(columns: body\\)"):
        check_corpus(DataSection(), store, str(tmp_path / "c.jsonl"))
    (tmp_path / "d.jsonl").write_text('{"text": "y"}\nnot json\n')
    with pytest.raises(ConfigError, match="d.jsonl: line 2 of its chunk is not a JSON object"):
        check_corpus(DataSection(), store, str(tmp_path / "d.jsonl"))
    with pytest.raises(ConfigError, match="glob matches no files"):
        check_corpus(DataSection(), store, str(tmp_path / "*.nothing"))


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture):
    (tmp_path / "bad.txt").write_bytes(b"good line\nbad \xff\xfe line\n")
    assert read(tmp_path / "bad.txt", store) == ["good line", "bad \ufffd\ufffd line"]
    assert "bad.txt: 2 undecodable byte sequence(s) replaced with U+FFFD" in caplog.text


def test_a_10_mb_line_is_one_document(tmp_path: Path, store: Store):
    """One 10 MB line (a dump with no line breaks) is one document, whole, whatever the chunk size:
    in text and JSON Lines alike."""
    huge = " ".join(LINES[i % len(LINES)] for i in range(75_000))
    assert len(huge) > 10_000_000
    (tmp_path / "big.txt").write_text(huge + "\nsmall document\n")
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": huge}) + "\n" + json.dumps({"text": "small document"}))
    for name in ("big.txt", "big.jsonl"):
        corpus = check_corpus(DataSection(), store, str(tmp_path / name))
        assert [len(d) for d in documents(corpus, store, 1 << 20)] == [len(huge), len("small document")]


def test_a_changed_file_changes_the_fingerprint(tmp_path: Path, store: Store):
    (tmp_path / "a.txt").write_text("one document\n")
    before = check_corpus(DataSection(), store, str(tmp_path / "a.txt")).fingerprint()
    assert check_corpus(DataSection(), store, str(tmp_path / "a.txt")).fingerprint() == before
    (tmp_path / "a.txt").write_text("one document, changed\n")
    assert check_corpus(DataSection(), store, str(tmp_path / "a.txt")).fingerprint() != before


def test_eval_split_is_deterministic_and_disjoint():
    held = [t for t in LINES if is_eval_document(t, 0.2)]
    assert held == [t for t in LINES if is_eval_document(t, 0.2)]
    assert 0.1 < len(held) / len(LINES) < 0.3


def test_a_hugging_face_dataset_streams_one_chunk_per_stored_file(tmp_path: Path, store: Store):
    """`hf:NAME` goes through `datasets`' streaming mode (here a dataset folder on disk, as the hub's
    are cached): one chunk per file it is stored in, each read without loading the split."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    for part, docs in enumerate((LINES[:40], LINES[40:100])):
        (folder / f"part-{part}.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    corpus = check_corpus(DataSection(text_column="body"), store, f"hf:{folder}")
    assert len(chunks(corpus, 1)) == 2
    assert sorted(documents(corpus, store)) == sorted(d.strip() for d in LINES[:100])
    with pytest.raises(ConfigError, match="has no column 'text'"):
        check_corpus(DataSection(), store, f"hf:{folder}")
