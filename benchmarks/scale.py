"""Benchmark: data at scale (`make bench-scale`). The 51 MiB Wikipedia shards against a corpus about
20 times larger made from them (their lines reshuffled, files of the shards' size), each through the
real `plm-ray` commands in fresh processes:

- `prepare` into an empty store: the cache build, tokens per second per CPU core;
- `pretrain` into another empty store: training streams from the cache while it is built, the time
  to the first step (result.json's startup_seconds) and the peak memory (PSS) of the command's whole
  process tree (driver, Ray's object store and workers) and of the driver alone;
- `pretrain` again on the first store's complete cache: the time to the first step of a later run.

Also the rate at which one core reads a complete cache back (BlockSource, as a training worker
does). The targets (issue 22): large / small first step <= 1.3 streaming and <= 1.1 on the cache,
peak memory <= 1.3. Writes bench-scale-results.json; BENCHMARKS.md, "Data at scale", has the table.

    python -m benchmarks.scale --corpus ../shared/data/corpus [--copies 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MODEL_SETS, SEQ, run_python

PRETRAIN = [
    *MODEL_SETS,
    "pretrain.num_workers=1",  # one worker holding one core: the other builds the cache beside it
    "pretrain.max_steps=10",
    "pretrain.warmup_steps=2",
    "pretrain.log_every_steps=5",
]
VOCAB = 30522


def synthetic_corpus(shards: list[Path], folder: Path, copies: int) -> Path:
    """`copies` reshuffles of every line of the shards, in files of a shard's size."""
    lines = [line for shard in shards for line in shard.read_text().splitlines() if line.strip()]
    per_file = len(lines) // len(shards)
    folder.mkdir(parents=True)
    for copy in range(copies):
        order = np.random.default_rng(copy).permutation(len(lines))
        for part in range(len(shards)):
            chosen = order[part * per_file : (part + 1) * per_file]
            (folder / f"part-{copy:03d}-{part:02d}.txt").write_text("\n".join(lines[i] for i in chosen) + "\n")
    return folder


def tokenizer_dir(shards: list[Path], folder: Path) -> Path:
    """One WordPiece for both corpora, trained once: the tokenizer's training is not what scales here."""
    from plm_ray.config import TokenizerSection
    from plm_ray.data.tokenizer import train_wordpiece

    texts = [line for shard in shards[:2] for line in shard.read_text().splitlines() if line.strip()]
    train_wordpiece([texts], TokenizerSection(vocab_size=VOCAB)).save_pretrained(str(folder))
    return folder


def command(name: str, store: Path, sets: list[str]) -> dict[str, Any]:
    """`plm-ray NAME` in a fresh process: its wall time and peak memory (whole tree, driver)."""
    args = ["-m", "plm_ray", name, "--set", f"store.root={store}"]
    for s in sets:
        args += ["--set", s]
    _, wall, monitor = run_python(args, measure_memory=True)
    return {"wall_seconds": wall, "peak_pss": monitor.peak, "driver_peak_pss": monitor.root_peak}


def cache_tokens(store: Path) -> tuple[str, int]:
    """The key of the store's one cache and its tokens."""
    (index,) = (store / "cache" / "blocks").glob("*/index.json")
    counts = json.loads(index.read_text())
    return index.parent.name, (counts["train_blocks"] + counts["eval_blocks"]) * SEQ


def read_rate(store: Path, key: str) -> float:
    """Tokens per second one core reads a complete cache's train blocks back, as a worker does."""
    from plm_ray.config import StoreSection
    from plm_ray.data.stream import BlockSource
    from plm_ray.store import Store

    source = BlockSource(Store(StoreSection(root=str(store))), key, "train")
    total, started = source.available(), time.perf_counter()
    for start in range(0, total, 4096):
        source.read(start, min(4096, total - start))
    return total * SEQ / (time.perf_counter() - started)


def measure(corpus: Path, tokenizer: Path, work: Path, name: str) -> dict[str, Any]:
    data = [f"data.corpus={corpus}", f"tokenizer.path={tokenizer}"]
    cached, streamed = work / f"{name}-cached", work / f"{name}-streamed"
    build = command("prepare", cached, data)
    key, tokens = cache_tokens(cached)
    row: dict[str, Any] = {"corpus_bytes": sum(f.stat().st_size for f in corpus.iterdir()), "tokens": tokens}
    row["build_tokens_per_second_per_core"] = tokens / build["wall_seconds"] / os.cpu_count()
    row["read_tokens_per_second"] = read_rate(cached, key)
    for kind, store in (("streaming", streamed), ("cached", cached)):
        run = command("pretrain", store, [*data, *PRETRAIN, f"run.name={kind}"])
        result = json.loads((store / kind / "pretrain" / "result.json").read_text())
        row[kind] = {**run, "startup_seconds": result["startup_seconds"]}
    print(json.dumps({name: row}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus"))
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    shards = sorted(args.corpus.glob("enwiki_*.txt"))
    if len(shards) < 2:
        raise SystemExit(f"bench-scale needs the Wikipedia shards enwiki_*.txt in {args.corpus}")
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        work = Path(tmp)
        tokenizer = tokenizer_dir(shards, work / "tokenizer")
        corpora = {"small": args.corpus, "large": synthetic_corpus(shards, work / "large", args.copies)}
        rows = {name: measure(corpus, tokenizer, work, name) for name, corpus in corpora.items()}
    small, big = rows["small"], rows["large"]
    results = {
        "cpu_cores": os.cpu_count(),
        "size_ratio": big["corpus_bytes"] / small["corpus_bytes"],
        "first_step_streaming_ratio": big["streaming"]["startup_seconds"] / small["streaming"]["startup_seconds"],
        "first_step_cached_ratio": big["cached"]["startup_seconds"] / small["cached"]["startup_seconds"],
        "peak_memory_ratio": big["streaming"]["peak_pss"] / small["streaming"]["peak_pss"],
        "driver_memory_ratio": big["streaming"]["driver_peak_pss"] / small["streaming"]["driver_peak_pss"],
        "build_tokens_per_second_per_core": big["build_tokens_per_second_per_core"],
        "read_tokens_per_second": big["read_tokens_per_second"],
        "runs": rows,
    }
    path = args.out / "bench-scale-results.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
