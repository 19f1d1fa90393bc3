"""Reading the shard cache where training runs: each worker reads its own blocks from the store,
chunk files in plan order, waiting for chunks still being built (so training starts with the first
chunk, not after the last), with no driver or coordinator on the data path.

The blocks of an epoch are a pure function of (cache, epoch, seed): global micro-batch g of size B
on rank r of W holds positions [(g·W + r)·B, (g·W + r + 1)·B), and with a shuffle window S each full
window of S positions is permuted by a seed of (run seed, epoch, window). Every rank therefore takes
the same number of micro-batches an epoch (the tail that fills no global batch is left out), and a
resumed run that knows its epoch and micro-batch continues with the very next block.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from plm_ray.data.cache import chunk_file, complete_manifest, folder
from plm_ray.store import Store

POLL_SECONDS = 0.5  # how often a reader waiting for a chunk being built looks again
WINDOW_BLOCKS = 4096  # blocks read at once (and held) when no shuffle window is set


class CacheFailed(RuntimeError):
    """The cache build stopped with an error (failed.json)."""


class BlockSource:
    """One split of a cache as a sequence of blocks: the chunks in plan order, then the tails."""

    def __init__(self, store: Store, key: str, split: str, waiting: Callable[[str], None] = lambda doing: None):
        self.store, self.key, self.split, self.waiting = store, key, split, waiting
        plan = self._wait_for("plan.json")
        self.block_size, self.dtype, self.n_chunks = plan["block_size"], np.dtype(plan["dtype"]), plan["n_chunks"]
        self.counts: list[int] = []  # blocks of each chunk known so far, in plan order
        self.complete = False

    def _wait_for(self, name: str) -> dict[str, Any]:
        while not self.store.exists(*folder(self.key), name):
            self._raise_if_failed()
            time.sleep(POLL_SECONDS)
        return self.store.read_json(*folder(self.key), name)

    def _raise_if_failed(self) -> None:
        if self.store.exists(*folder(self.key), "failed.json"):
            error = self.store.read_json(*folder(self.key), "failed.json")["error"]
            raise CacheFailed(f"the tokenized cache {self.store.uri(*folder(self.key))} failed to build: {error}")

    def refresh(self) -> None:
        """Learn about chunks finished since the last look (in plan order: a reader needs them so)."""
        if self.complete:
            return
        if self.store.exists(*folder(self.key), "index.json"):
            self.counts = self.store.read_json(*folder(self.key), "index.json")[f"{self.split}_counts"]
            self.complete = True
            return
        while len(self.counts) < self.n_chunks:
            manifest = complete_manifest(self.store, self.key, len(self.counts))
            if manifest is None:
                break
            self.counts.append(manifest[f"{self.split}_blocks"])
        self._raise_if_failed()

    def available(self) -> int:
        self.refresh()
        return sum(self.counts)

    def wait_until(self, blocks: int) -> int:
        """Blocks available once at least `blocks` are, or the cache is complete with fewer."""
        while self.available() < blocks and not self.complete:
            self.waiting(f"the tokenized cache (chunk {len(self.counts) + 1} of {self.n_chunks} is being built)")
            time.sleep(POLL_SECONDS)
        return self.available()

    def read(self, start: int, count: int) -> np.ndarray:
        """Blocks [start, start + count) as int64 [count, block_size]; they must be available."""
        end, first, out = start + count, 0, []
        row_bytes = self.block_size * self.dtype.itemsize
        for index, n in enumerate(self.counts):
            low, high = max(start, first), min(end, first + n)
            if low < high:
                name = chunk_file(self.split, index if index < self.n_chunks else "tails")
                with self.store.fs.open_input_file(self.store.path(*folder(self.key), name)) as f:
                    raw = f.read_at((high - low) * row_bytes, (low - first) * row_bytes)
                out.append(np.frombuffer(raw, dtype=self.dtype).reshape(high - low, self.block_size))
            first += n
        blocks = np.concatenate(out) if out else np.empty((0, self.block_size), dtype=self.dtype)
        if len(blocks) != count:
            raise ValueError(f"blocks [{start}, {end}) of {self.split} are not all available")
        return blocks.astype(np.int64)


def epoch_batches(
    source: BlockSource, rank: int, world: int, batch: int, epoch: int, start_batch: int, shuffle: int, seed: int
) -> Iterator[np.ndarray]:
    """This rank's micro-batches of `epoch`, from its micro-batch `start_batch` on (module docstring)."""
    held_start, held = 0, np.empty((0, source.block_size), dtype=np.int64)  # blocks in epoch order
    step = start_batch
    while True:
        first = (step * world + rank) * batch
        needed = (step + 1) * world * batch  # the whole global micro-batch must exist, for every rank
        if source.wait_until(needed) < needed:
            return  # the epoch's last full global micro-batch was the one before
        pieces, position = [], first
        while position < first + batch:
            if not held_start <= position < held_start + len(held):
                held_start, held = _load(source, position, shuffle, seed, epoch)
            take = min(first + batch, held_start + len(held)) - position
            pieces.append(held[position - held_start : position - held_start + take])
            position += take
        yield np.concatenate(pieces)
        step += 1


def _load(source: BlockSource, position: int, shuffle: int, seed: int, epoch: int) -> tuple[int, np.ndarray]:
    """Blocks from about `position` on, in this epoch's order: with a shuffle window, the window
    holding it (permuted if full); without, up to WINDOW_BLOCKS blocks as stored."""
    if not shuffle:
        return position, source.read(position, min(WINDOW_BLOCKS, source.available() - position))
    start = position // shuffle * shuffle
    blocks = source.read(start, min(shuffle, source.wait_until(start + shuffle) - start))
    if len(blocks) == shuffle:
        blocks = blocks[np.random.default_rng([seed, epoch, start // shuffle]).permutation(shuffle)]
    return start, blocks


def prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """`items` produced `depth` ahead in a background thread, so reading overlaps the steps; the
    producer's exception is raised here."""
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                buffer.put(("item", item))
            buffer.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer)
            buffer.put(("error", exc))

    threading.Thread(target=produce, daemon=True).start()
    while True:
        kind, value = buffer.get()
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value
