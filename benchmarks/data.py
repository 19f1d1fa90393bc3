"""Benchmark 2: tokenize + pack the Wikipedia shards into 128-token blocks.

plm-ray's `prepare` (Ray Data tasks tokenize and pack the corpus's chunks into the store's shard
cache) against the run_mlm.py recipe: `datasets.load_dataset("text")`, `Dataset.map(batched=True,
num_proc=2)` to tokenize, then `group_texts`. Each side runs in its own process; the parent records
that process tree's peak memory (PSS), for 1 shard and for all 16.

Run as a child: python -m benchmarks.data ray|datasets TOKENIZER_DIR FILE_OR_GLOB"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import SEQ, median, run_python

REPEATS = 2
CHUNK_MB = 1  # a shard is then 3 tasks, so one shard too keeps both cores busy, as num_proc=2 does


def ray_data(tokenizer_dir: str, location: str) -> int:
    """plm-ray's `prepare` (from Python, once Ray is up) into an empty store: the tokenized cache."""
    from plm_ray import api
    from plm_ray.cluster import ensure_ray

    ensure_ray()
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        overrides = {"data.corpus": location, "tokenizer.path": tokenizer_dir, "data.block_size": SEQ}
        api.prepare(api.load_config(None, {**overrides, "data.chunk_mb": CHUNK_MB, "store.root": store}))
        seconds = time.perf_counter() - started
        (index,) = Path(store).glob("cache/blocks/*/index.json")
        counts = json.loads(index.read_text())
        return _report((counts["train_blocks"] + counts["eval_blocks"]) * SEQ, started, seconds)


def hf_datasets(tokenizer_dir: str, location: str) -> int:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        raw = load_dataset("text", data_files=location, split="train", cache_dir=cache)

        def tokenize(examples: dict[str, list]) -> Any:  # run_mlm.py, line_by_line=False
            return tokenizer(examples["text"], return_special_tokens_mask=True)

        def group_texts(examples: dict[str, list]) -> dict[str, list]:  # run_mlm.py's group_texts
            concatenated = {k: sum(examples[k], []) for k in examples}
            total = len(concatenated["input_ids"]) // SEQ * SEQ
            return {k: [t[i : i + SEQ] for i in range(0, total, SEQ)] for k, t in concatenated.items()}

        tokens = raw.map(tokenize, batched=True, num_proc=2, remove_columns=["text"])
        blocks = tokens.map(group_texts, batched=True, num_proc=2)
        return _report(len(blocks) * SEQ, started)


def _report(tokens: int, started: float, seconds: float | None = None) -> int:
    print(json.dumps({"tokens": tokens, "seconds": seconds or time.perf_counter() - started}))
    return 0


def run_data(corpus_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    shards = sorted(str(p) for p in corpus_dir.glob("enwiki_*.txt"))
    if len(shards) < 2:
        raise SystemExit(f"benchmark 2 needs the Wikipedia shards enwiki_*.txt in {corpus_dir}")
    rows: dict[str, Any] = {}
    for tool in ("ray", "datasets"):
        for name, location, count in (("1", shards[0], 1), ("all", str(corpus_dir / "enwiki_*.txt"), len(shards))):
            runs = []
            for _ in range(REPEATS):
                out, _, monitor = run_python(
                    ["-m", "benchmarks.data", tool, str(tokenizer_dir), location], measure_memory=True
                )
                measured = json.loads(next(x for x in reversed(out.splitlines()) if x.startswith('{"tokens"')))
                runs.append({**measured, "rate": measured["tokens"] / measured["seconds"], "peak_pss": monitor.peak})
            rows[f"{tool}_{name}"] = {
                "shards": count,
                "tokens": runs[0]["tokens"],
                "tokens_per_second": median([r["rate"] for r in runs]),
                "peak_pss": max(r["peak_pss"] for r in runs),
            }
    return rows


if __name__ == "__main__":
    tool, tokenizer_dir, location = sys.argv[1:]
    sys.exit((ray_data if tool == "ray" else hf_datasets)(tokenizer_dir, location))
