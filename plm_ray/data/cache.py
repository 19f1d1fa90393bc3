"""The tokenized shard cache: packed blocks in the store, built once per corpus, tokenizer and block
settings, read by every later run, epoch, restart and sweep of them.

    <root>/cache/blocks/<key>/plan.json          the chunks to build (written first)
    <root>/cache/blocks/<key>/chunk-NNNNN.json   a chunk's manifest: block counts and its leftover tokens
    <root>/cache/blocks/<key>/{train,eval}-NNNNN.bin   its blocks, raw little-endian, block after block
    <root>/cache/blocks/<key>/{train,eval}-tails.bin   the chunks' leftovers packed together, at the end
    <root>/cache/blocks/<key>/index.json         written last: the cache is complete
    <root>/cache/blocks/<key>/failed.json        a build that stopped on an error says which

A chunk's manifest is written after its blocks, so a build that is interrupted resumes with the
chunks that have none, and a reader never takes a half-written chunk; the key changes with any corpus
file's size or modification time, the tokenizer's vocabulary or the block settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from plm_ray.config import CACHE, DataSection
from plm_ray.data.corpus import Chunk, Corpus, chunks, read_chunk
from plm_ray.data.packing import SPLITS, Packer, pack_documents
from plm_ray.store import Store

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the layout above changes: older caches then get another key


def block_dtype(n_tokens: int) -> str:
    """uint16 where every id fits, half the bytes of int32."""
    return "uint16" if n_tokens <= 2**16 else "int32"


def cache_key(corpus: Corpus, tokenizer_json: str, cfg: DataSection) -> str:
    settings = {
        "format": FORMAT,
        "corpus": corpus.fingerprint(),
        "tokenizer": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        "block_size": cfg.block_size,
        "eval_fraction": cfg.eval_fraction,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def folder(key: str) -> tuple[str, ...]:
    return (CACHE, "blocks", key)


def chunk_file(split: str, index: int | str) -> str:
    return f"{split}-{index:05d}.bin" if isinstance(index, int) else f"{split}-{index}.bin"


def manifest_file(index: int) -> str:
    return f"chunk-{index:05d}.json"


def build_chunk(row: dict[str, Any], store: Store, key: str, corpus: Corpus, tokenizer: dict, cfg: DataSection) -> dict:
    """One chunk -> its blocks and manifest in the store. A Ray Data map task: it runs where Ray puts
    it and writes straight to the store, so nothing passes through the driver."""
    chunk = Chunk(**{k: row[k] for k in ("index", "path", "start", "end")})
    fs = store.resolve(corpus.location)[0] if corpus.kind != "hf" else None
    special = (tokenizer["cls"], tokenizer["sep"])
    docs = read_chunk(corpus, chunk, fs)
    packed = pack_documents(
        docs, tokenizer["json"], special, cfg.block_size, cfg.eval_fraction, cfg.tokenize_batch_docs
    )
    store.delete(*folder(key), manifest_file(chunk.index))  # a rebuilt chunk is not complete until its end
    manifest: dict[str, Any] = {"index": chunk.index}
    for split, (blocks, tail) in packed.items():
        data = blocks.astype(tokenizer["dtype"]).tobytes()
        store.write_bytes(data, *folder(key), chunk_file(split, chunk.index))
        manifest[f"{split}_blocks"], manifest[f"{split}_bytes"] = len(blocks), len(data)
        manifest[f"{split}_tail"] = tail.tolist()
    store.write_json(manifest, *folder(key), manifest_file(chunk.index))  # last: the chunk is done
    return {"index": chunk.index}


def complete_manifest(store: Store, key: str, index: int) -> dict[str, Any] | None:
    """The chunk's manifest if the chunk is fully written (its files have the sizes it lists)."""
    if not store.exists(*folder(key), manifest_file(index)):
        return None
    manifest = store.read_json(*folder(key), manifest_file(index))
    for split in SPLITS:
        path = store.path(*folder(key), chunk_file(split, index))
        info = store.fs.get_file_info(path)
        if info.size != manifest[f"{split}_bytes"]:
            return None
    return manifest


def plan(store: Store, key: str, corpus: Corpus, cfg: DataSection, tokenizer: dict[str, Any]) -> list[Chunk]:
    """The chunks of this cache: the stored plan if a build started before, else a new one (stored)."""
    if store.exists(*folder(key), "plan.json"):
        return [Chunk(**c) for c in store.read_json(*folder(key), "plan.json")["chunks"]]
    planned = chunks(corpus, max(1, int(cfg.chunk_mb * 2**20)))
    layout = {"block_size": cfg.block_size, "dtype": tokenizer["dtype"], "n_chunks": len(planned)}
    store.write_json({"key": key, **layout, "chunks": [asdict(c) for c in planned]}, *folder(key), "plan.json")
    return planned


def build(
    store: Store,
    key: str,
    corpus: Corpus,
    cfg: DataSection,
    tokenizer: dict[str, Any],
    tasks: int,
    stop: threading.Event | None = None,
) -> None:
    """Build (or finish building) the cache with at most `tasks` chunk tasks at a time, then its tails
    and its index; `stop` ends it early (resumable). A failure is recorded in failed.json, so readers
    waiting for a chunk stop too."""
    import ray.data

    if store.exists(*folder(key), "index.json"):
        return
    store.delete(*folder(key), "failed.json")
    planned = plan(store, key, corpus, cfg, tokenizer)
    pending = [asdict(c) for c in planned if complete_manifest(store, key, c.index) is None]
    started = time.time()
    try:
        if pending:
            built = ray.data.from_items(pending, override_num_blocks=len(pending)).map(
                build_chunk,
                fn_kwargs={"store": store, "key": key, "corpus": corpus, "tokenizer": tokenizer, "cfg": cfg},
                num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=max(1, tasks)),
            )
            for _ in built.iter_rows():
                if stop is not None and stop.is_set():
                    return
        index = _finish(store, key, planned, tokenizer, cfg)
    except Exception as exc:
        store.write_json({"error": f"{type(exc).__name__}: {exc}"}, *folder(key), "failed.json")
        raise
    log.info(
        "tokenized %s: %d chunks (%d built now) into %s train blocks in %.1fs",
        corpus.location,
        len(planned),
        len(pending),
        f"{index['train_blocks']:,}",
        time.time() - started,
    )


def _finish(store: Store, key: str, planned: list[Chunk], tokenizer: dict[str, Any], cfg: DataSection) -> dict:
    """Pack the chunks' leftover tokens, in chunk order, into the tails files; then the index."""
    manifests = [complete_manifest(store, key, c.index) for c in planned]
    if any(m is None for m in manifests):
        raise RuntimeError(f"cache {key}: chunks missing after the build")
    index: dict[str, Any] = {"key": key, "block_size": cfg.block_size, "dtype": tokenizer["dtype"]}
    for split in SPLITS:
        packer = Packer(cfg.block_size, tokenizer["cls"])
        tails = packer(np.concatenate([np.asarray(m[f"{split}_tail"], dtype=np.int32) for m in manifests]))
        store.write_bytes(tails.astype(tokenizer["dtype"]).tobytes(), *folder(key), chunk_file(split, "tails"))
        counts = [m[f"{split}_blocks"] for m in manifests] + [len(tails)]
        index[f"{split}_counts"], index[f"{split}_blocks"] = counts, sum(counts)
    store.write_json(index, *folder(key), "index.json")
    return index
