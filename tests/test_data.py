"""Corpus reading, tokenizer training, packing and masking on real Ray Data / tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_ray.config import ConfigError, DataSection, StoreSection, TokenizerSection
from plm_ray.data import embedded
from plm_ray.data.corpus import read_corpus
from plm_ray.data.packing import is_eval_document, packed_blocks, tokenized
from plm_ray.data.tokenizer import prepare_tokenizer
from plm_ray.store import Store

pytestmark = pytest.mark.usefixtures("ray_cluster")
LINES = embedded.corpus_lines(n_docs=600, seed=3)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(StoreSection(root=str(tmp_path / "store")))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    import ray.data

    corpus = ray.data.from_items([{"text": t} for t in LINES])
    return prepare_tokenizer(TokenizerSection(vocab_size=400), corpus, tmp_path_factory.mktemp("tok"))


def _texts(ds) -> list[str]:
    return sorted(r["text"] for r in ds.take_all())


def test_reads_text_jsonl_parquet_csv_and_globs(tmp_path: Path, store: Store):
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
    assert _texts(read_corpus(DataSection(), store, str(tmp_path / "t"))) == sorted(docs)
    assert _texts(read_corpus(DataSection(), store, str(tmp_path / "t" / "*.txt"))) == sorted(docs)
    for name in ("c.jsonl", "d.parquet", "e.csv"):
        assert _texts(read_corpus(DataSection(text_column="body"), store, str(tmp_path / name))) == sorted(docs)


def test_blank_line_documents(tmp_path: Path, store: Store):
    (tmp_path / "a.txt").write_text("para one\nstill one\n\npara two\n\n\npara three\n")
    got = _texts(read_corpus(DataSection(documents="blank_line"), store, str(tmp_path / "a.txt")))
    assert got == ["para one still one", "para three", "para two"]


def test_bad_corpus_inputs(tmp_path: Path, store: Store):
    with pytest.raises(ConfigError, match="corpus path not found: .*missing"):
        read_corpus(DataSection(), store, str(tmp_path / "missing"))
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(ConfigError, match="contains no text"):
        read_corpus(DataSection(), store, str(tmp_path / "empty.txt"))
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "a.txt").write_text("x\n")
    (tmp_path / "mix" / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(ConfigError, match="mixes formats"):
        read_corpus(DataSection(), store, str(tmp_path / "mix"))
    (tmp_path / "c.jsonl").write_text('{"body": "y"}\n')
    with pytest.raises(ConfigError, match="has no column 'text' \\(columns: body\\)"):
        read_corpus(DataSection(), store, str(tmp_path / "c.jsonl"))


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path: Path, store: Store):
    (tmp_path / "bad.txt").write_bytes(b"good line\nbad \xff\xfe line\n")
    assert _texts(read_corpus(DataSection(), store, str(tmp_path / "bad.txt"))) == [
        "bad \ufffd\ufffd line",
        "good line",
    ]


def test_packing_keeps_every_token_and_never_pads(tokenizer):
    import ray.data

    corpus = ray.data.from_items([{"text": t} for t in LINES]).repartition(7)
    tok_json, sep, cls = tokenizer.backend_tokenizer.to_str(), tokenizer.sep_token_id, tokenizer.cls_token_id
    block = 48
    # small tokenize batches: many batch boundaries that the packer must carry across
    stream = [r["tokens"] for r in tokenized(corpus, tok_json, sep, "train", 0.1, 16).take_all()]
    tokens_in = sum(len(t) for t in stream)
    blocks = np.stack(
        [r["input_ids"] for r in packed_blocks(corpus, tok_json, sep, cls, "train", 0.1, block, 16).take_all()]
    )
    assert blocks.shape[1] == block
    assert (blocks[:, 0] == cls).all()
    assert not (blocks == tokenizer.pad_token_id).any()
    body = block - 1
    assert blocks.shape[0] == tokens_in // body  # only the final partial block is dropped
    assert tokens_in - blocks.shape[0] * body < body
    assert np.bincount(blocks[:, 1:].ravel(), minlength=len(tokenizer)).sum() == blocks.shape[0] * body


def test_eval_split_is_deterministic_and_disjoint():
    held = [t for t in LINES if is_eval_document(t, 0.2)]
    assert held == [t for t in LINES if is_eval_document(t, 0.2)]
    assert 0.1 < len(held) / len(LINES) < 0.3


def test_a_10_mb_line_is_one_document_packed_in_full(tmp_path: Path, store: Store, tokenizer):
    """One 10 MB line (a dump with no line breaks) is one document: read whole, tokenized, and cut
    into blocks like any other, for text and JSON Lines alike."""
    huge = " ".join(LINES[i % len(LINES)] for i in range(75_000))
    assert len(huge) > 10_000_000
    (tmp_path / "big.txt").write_text(huge + "\nsmall document\n")
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": huge}) + "\n" + json.dumps({"text": "small document"}))
    tok_json, sep, cls = tokenizer.backend_tokenizer.to_str(), tokenizer.sep_token_id, tokenizer.cls_token_id
    expected = len(tokenizer(huge, add_special_tokens=False).input_ids) + 1
    for name in ("big.txt", "big.jsonl"):
        corpus = read_corpus(DataSection(), store, str(tmp_path / name))
        assert sorted(len(r["text"]) for r in corpus.take_all()) == [len("small document"), len(huge)]
        blocks = packed_blocks(corpus, tok_json, sep, cls, "train", 1e-9, 128, 2048).materialize()
        assert blocks.count() >= expected // 127
