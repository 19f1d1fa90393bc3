"""Stage 3, tokenize + pack: documents -> fixed-length `[CLS] doc [SEP] doc [SEP] ...` blocks.

Tokenization runs as parallel stateless Ray Data tasks with the raw `tokenizers` library. Packing runs
in one small actor that carries the unfinished tail of each batch into the next, so across the whole
corpus the only tokens dropped are those of the final partial block. Blocks contain no padding, so
attention needs no mask and no compute is spent on pad positions.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import ray.data
from tokenizers import Tokenizer

HASH_BUCKETS = 10_000


def is_eval_document(text: str, eval_fraction: float) -> bool:
    """Deterministic held-out split by content hash: the same document lands in the same split on
    every run, every node, and any read order."""
    return zlib.crc32(text.encode("utf-8")) % HASH_BUCKETS < eval_fraction * HASH_BUCKETS


@lru_cache(maxsize=2)
def _tokenizer(tokenizer_json: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json)


def tokenize_batch(
    batch: dict[str, np.ndarray], tokenizer_json: str, sep_id: int, split: str, eval_fraction: float
) -> dict[str, list]:
    """A batch of documents -> one row holding all their token ids, each document closed by [SEP]."""
    want_eval = split == "eval"
    texts = [str(t) for t in batch["text"] if is_eval_document(str(t), eval_fraction) == want_eval]
    encodings = _tokenizer(tokenizer_json).encode_batch_fast(texts, add_special_tokens=False)
    pieces = [np.asarray([*e.ids, sep_id], dtype=np.int32) for e in encodings]
    flat = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int32)
    return {"tokens": [flat], "documents": [len(texts)]}


class Packer:
    """Cuts the token stream into blocks of `block_size`, each starting with [CLS]."""

    def __init__(self, block_size: int, cls_id: int):
        self.body = block_size - 1
        self.cls_id = cls_id
        self.carry = np.empty(0, dtype=np.int32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        flat = np.concatenate([self.carry, *[np.asarray(t, dtype=np.int32) for t in batch["tokens"]]])
        n = len(flat) // self.body
        self.carry = flat[n * self.body :]
        blocks = flat[: n * self.body].reshape(n, self.body)
        cls = np.full((n, 1), self.cls_id, dtype=np.int32)
        return {"input_ids": np.concatenate([cls, blocks], axis=1)}


def tokenized(
    corpus: ray.data.Dataset, tokenizer_json: str, sep_id: int, split: str, eval_fraction: float, batch_docs: int
) -> ray.data.Dataset:
    """Rows of `tokens` (one per batch of documents) for one split."""
    return corpus.map_batches(
        tokenize_batch,
        batch_size=batch_docs,
        batch_format="numpy",
        fn_kwargs={"tokenizer_json": tokenizer_json, "sep_id": sep_id, "split": split, "eval_fraction": eval_fraction},
    )


def pack(tokens: ray.data.Dataset, block_size: int, cls_id: int) -> ray.data.Dataset:
    """Rows of `input_ids` (int32, length `block_size`). One packing actor keeps the carry exact;
    it needs no CPU reservation because concatenation is cheap next to tokenization."""
    return tokens.map_batches(
        Packer,
        fn_constructor_kwargs={"block_size": block_size, "cls_id": cls_id},
        batch_size=8,
        batch_format="numpy",
        concurrency=1,
        num_cpus=0,
    )


def packed_blocks(
    corpus: ray.data.Dataset,
    tokenizer_json: str,
    sep_id: int,
    cls_id: int,
    split: str,
    eval_fraction: float,
    block_size: int,
    batch_docs: int,
) -> ray.data.Dataset:
    return pack(tokenized(corpus, tokenizer_json, sep_id, split, eval_fraction, batch_docs), block_size, cls_id)
