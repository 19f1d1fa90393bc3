"""The tokenized shard cache and reading it: packing, keys, resumable builds, streaming, exact epochs."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plm_ray.config import DataSection, StoreSection, TokenizerSection
from plm_ray.data import cache, embedded
from plm_ray.data.corpus import Corpus, check_corpus
from plm_ray.data.packing import is_eval_document, tokenize
from plm_ray.data.stream import BlockSource, CacheFailed, epoch_batches
from plm_ray.data.tokenizer import train_wordpiece
from plm_ray.store import Store

LINES = embedded.corpus_lines(n_docs=800, seed=5)
DATA = DataSection(block_size=32, eval_fraction=0.1, chunk_mb=0.01, tokenize_batch_docs=16)  # ~10 KiB chunks


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece([LINES], TokenizerSection(vocab_size=400))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(StoreSection(root=str(tmp_path / "store")))


@pytest.fixture
def corpus(tmp_path: Path, store: Store) -> Corpus:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"part-{i}.txt").write_text("\n".join(LINES[i::3]) + "\n")
    return check_corpus(DATA, store, str(folder))


def info(tokenizer: Any) -> dict[str, Any]:
    return {
        "json": tokenizer.backend_tokenizer.to_str(),
        "cls": tokenizer.cls_token_id,
        "sep": tokenizer.sep_token_id,
        "dtype": cache.block_dtype(len(tokenizer)),
    }


def build_here(store: Store, corpus: Corpus, tokenizer: Any, data: DataSection = DATA, upto: int = -1) -> str:
    """The cache built in this process, chunk by chunk (what each Ray Data task does), and finished
    unless `upto` stops it after that many chunks."""
    key = cache.cache_key(corpus, info(tokenizer)["json"], data)
    planned = cache.plan(store, key, corpus, data, info(tokenizer))
    for chunk in planned[: upto if upto >= 0 else None]:
        cache.build_chunk(asdict(chunk), store, key, corpus, info(tokenizer), data)
    if upto < 0:
        cache._finish(store, key, planned, info(tokenizer), data)
    return key


def test_every_token_is_packed_but_the_last_partial_block(store: Store, corpus: Corpus, tokenizer):
    """Each chunk packs on its own and keeps its leftover; the leftovers are packed together at the
    end, so of each split only the final partial block is dropped; blocks start with [CLS], no padding."""
    key = build_here(store, corpus, tokenizer)
    n_chunks = store.read_json(*cache.folder(key), "plan.json")["n_chunks"]
    assert n_chunks > 10, "small chunks: many boundaries the leftovers must cross"
    docs = [d for i in range(3) for d in LINES[i::3]]
    body = DATA.block_size - 1
    for split in ("train", "eval"):
        texts = [d for d in docs if is_eval_document(d, DATA.eval_fraction) == (split == "eval")]
        tokens_in = len(tokenize(texts, info(tokenizer)["json"], tokenizer.sep_token_id))
        source = BlockSource(store, key, split)
        blocks = source.read(0, source.available())
        assert source.complete and blocks.shape == (tokens_in // body, DATA.block_size)
        assert (blocks[:, 0] == tokenizer.cls_token_id).all() and not (blocks == tokenizer.pad_token_id).any()


def test_the_key_follows_corpus_tokenizer_and_block_settings(tmp_path: Path, store: Store, corpus: Corpus, tokenizer):
    key = cache.cache_key(corpus, info(tokenizer)["json"], DATA)
    assert cache.cache_key(check_corpus(DATA, store, corpus.location), info(tokenizer)["json"], DATA) == key
    assert cache.cache_key(corpus, info(tokenizer)["json"], replace(DATA, block_size=64)) != key
    other = train_wordpiece([LINES[:200]], TokenizerSection(vocab_size=300))
    assert cache.cache_key(corpus, info(other)["json"], DATA) != key
    (tmp_path / "corpus" / "part-1.txt").write_text("a changed corpus file\n")
    assert cache.cache_key(check_corpus(DATA, store, corpus.location), info(tokenizer)["json"], DATA) != key


def test_a_half_written_chunk_is_never_read(store: Store, corpus: Corpus, tokenizer):
    """A chunk's manifest is written last and lists its files' sizes: a chunk whose blocks were cut
    short is not complete, and a reader stops before it."""
    key = build_here(store, corpus, tokenizer, upto=3)
    assert all(cache.complete_manifest(store, key, i) for i in range(3))
    path = Path(store.path(*cache.folder(key), cache.chunk_file("train", 1)))
    path.write_bytes(path.read_bytes()[:10])
    assert cache.complete_manifest(store, key, 1) is None
    source = BlockSource(store, key, "train")
    assert source.available() == store.read_json(*cache.folder(key), cache.manifest_file(0))["train_blocks"]
    assert not source.complete


def test_a_reader_streams_chunks_as_they_are_built(store: Store, corpus: Corpus, tokenizer):
    """Training reads the first chunks while the last are still being built."""
    key = cache.cache_key(corpus, info(tokenizer)["json"], DATA)
    planned = cache.plan(store, key, corpus, DATA, info(tokenizer))
    built_at: dict[int, float] = {}

    def slow_build() -> None:
        for chunk in planned:
            cache.build_chunk(asdict(chunk), store, key, corpus, info(tokenizer), DATA)
            built_at[chunk.index] = time.time()
            time.sleep(0.1)
        cache._finish(store, key, planned, info(tokenizer), DATA)

    threading.Thread(target=slow_build, daemon=True).start()
    stream = epoch_batches(BlockSource(store, key, "train"), 0, 1, 4, epoch=0, start_batch=0, shuffle=0, seed=0)
    first = next(stream)
    received = time.time()
    assert first.shape == (4, DATA.block_size) and received < built_at.get(len(planned) - 1, float("inf"))
    assert sum(1 for _ in stream) > 0


def test_a_failed_build_stops_waiting_readers(store: Store, corpus: Corpus, tokenizer):
    key = build_here(store, corpus, tokenizer, upto=1)
    store.write_json({"error": "ValueError: bad line"}, *cache.folder(key), "failed.json")
    with pytest.raises(CacheFailed, match="failed to build: ValueError: bad line"):
        BlockSource(store, key, "train").wait_until(10**9)


def all_batches(source: BlockSource, world: int, batch: int, epoch: int, shuffle: int) -> list[list[np.ndarray]]:
    return [list(epoch_batches(source, r, world, batch, epoch, 0, shuffle, seed=7)) for r in range(world)]


@pytest.mark.parametrize("shuffle", [0, 64])
def test_an_epoch_is_a_pure_function_of_rank_epoch_and_position(store: Store, corpus: Corpus, tokenizer, shuffle):
    """Every rank takes the same number of micro-batches, together each block of the epoch's full
    global batches once; a stream started at micro-batch k yields exactly what followed k (what an
    exact resume needs); a shuffle permutes blocks within windows, anew each epoch, the same each time."""
    source = BlockSource(store, build_here(store, corpus, tokenizer), "train")
    world, batch = 2, 3
    ranks = all_batches(source, world, batch, 0, shuffle)
    assert len({len(r) for r in ranks}) == 1
    global_batches = source.available() // (world * batch)
    assert len(ranks[0]) == global_batches
    taken = np.concatenate([np.concatenate(r) for r in ranks])
    stored = source.read(0, global_batches * world * batch)
    assert sorted(map(bytes, taken)) == sorted(map(bytes, stored)), "each block of the epoch once"
    if not shuffle:
        assert np.array_equal(np.concatenate([ranks[0][0], ranks[1][0]]), stored[: world * batch])
    resumed = list(epoch_batches(source, 1, world, batch, 0, 5, shuffle, seed=7))
    assert all(np.array_equal(a, b) for a, b in zip(resumed, ranks[1][5:], strict=True))
    assert all_batches(source, world, batch, 0, shuffle)[0][0].tobytes() == ranks[0][0].tobytes()
    next_epoch = all_batches(source, world, batch, 1, shuffle)
    assert (next_epoch[0][0].tobytes() != ranks[0][0].tobytes()) == bool(shuffle)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_ray_data_build_resumes_an_interrupted_cache_and_reuses_a_complete_one(store: Store, corpus: Corpus, tokenizer):
    """The build through Ray Data tasks: a cache whose build stopped (chunk 2 and the index missing)
    is finished by building only what is missing; a complete one is not built again."""
    key = cache.cache_key(corpus, info(tokenizer)["json"], DATA)
    cache.build(store, key, corpus, DATA, info(tokenizer), tasks=2)
    folder = Path(store.path(*cache.folder(key)))
    index = (folder / "index.json").read_text()
    (folder / cache.manifest_file(2)).unlink()
    (folder / "index.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.json")}
    cache.build(store, key, corpus, DATA, info(tokenizer), tasks=2)
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.json")}
    assert (folder / "index.json").read_text() == index
    assert {n for n in after if after[n] != before.get(n)} == {cache.manifest_file(2)}
    cache.build(store, key, corpus, DATA, info(tokenizer), tasks=2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.json")} == after
