"""Tokenize + pack: documents -> fixed-length `[CLS] doc [SEP] doc [SEP] ...` blocks.

Tokenization uses the raw `tokenizers` library in batches. Each chunk of the corpus is packed on its
own (data/cache.py runs one task per chunk); the unfinished tail of a chunk is kept beside its blocks
and the tails are packed together at the end, so across the whole corpus the only tokens dropped
are those of the final partial block. Blocks contain no padding, so attention needs no mask and no
compute is spent on pad positions.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import islice

import numpy as np
from tokenizers import Tokenizer

HASH_BUCKETS = 10_000
SPLITS = ("train", "eval")


def is_eval_document(text: str, eval_fraction: float) -> bool:
    """Deterministic held-out split by content hash: the same document lands in the same split on
    every run, every node, and any read order."""
    return zlib.crc32(text.encode("utf-8")) % HASH_BUCKETS < eval_fraction * HASH_BUCKETS


@lru_cache(maxsize=2)
def _tokenizer(tokenizer_json: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json)


def tokenize(texts: list[str], tokenizer_json: str, sep_id: int) -> np.ndarray:
    """The documents' token ids, each document closed by [SEP], in one flat int32 array."""
    encodings = _tokenizer(tokenizer_json).encode_batch_fast(texts, add_special_tokens=False)
    pieces = [np.asarray([*e.ids, sep_id], dtype=np.int32) for e in encodings]
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int32)


class Packer:
    """Cuts a token stream into blocks of `block_size`, each starting with [CLS]; the tokens that do
    not fill a block wait in `carry` for the next call."""

    def __init__(self, block_size: int, cls_id: int):
        self.body = block_size - 1
        self.cls_id = cls_id
        self.carry = np.empty(0, dtype=np.int32)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        flat = np.concatenate([self.carry, tokens])
        n = len(flat) // self.body
        self.carry = flat[n * self.body :]
        blocks = flat[: n * self.body].reshape(n, self.body)
        return np.concatenate([np.full((n, 1), self.cls_id, dtype=np.int32), blocks], axis=1)


def pack_documents(
    documents: Iterable[str],
    tokenizer_json: str,
    special: tuple[int, int],
    block_size: int,
    eval_fraction: float,
    batch_docs: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split (train / eval, by content hash): the blocks packed from `documents` in order, and
    the tokens left over after the last full block. `special` is ([CLS] id, [SEP] id)."""
    cls_id, sep_id = special
    packers = {split: Packer(block_size, cls_id) for split in SPLITS}
    blocks: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for texts in _batched(documents, batch_docs):
        for split in SPLITS:
            chosen = [t for t in texts if is_eval_document(t, eval_fraction) == (split == "eval")]
            if chosen:
                blocks[split].append(packers[split](tokenize(chosen, tokenizer_json, sep_id)))
    empty = np.empty((0, block_size), dtype=np.int32)
    return {split: (np.concatenate([empty, *blocks[split]]), packers[split].carry) for split in SPLITS}


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, n)):
        yield batch
