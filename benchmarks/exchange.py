"""Benchmark 3b: what the ZeRO-2 gradient exchange costs at 2 ranks over gloo, by reduce bucket size.

The same engine step (the benchmark BERT, batch 32 x 128, plm-ray's CPU precision) in two one-thread
processes joined by gloo, no Ray: DeepSpeed's reduce bucket at hidden² (the Hugging Face
integration's "auto", what plm-ray keeps on GPUs) and at the size plm-ray's config chooses for CPU workers.
Both engines live in the same processes and step in alternation, so a machine whose speed drifts
slows both alike; torch.profiler counts the collectives one step makes.

Run as a child: python -m benchmarks.exchange TOKENIZER_SIZE AUTOCAST OUT_JSON"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import BATCH, SEQ, median
from benchmarks.train import bert
from benchmarks.zero import engine_spec, random_batch
from plm_ray.config import PRESETS
from plm_ray.engine.engine import Engine
from plm_ray.hardware import Hardware
from plm_ray.model.heads import SparseMLM
from plm_ray.ports import free_port

WARMUP_ROUNDS, TIMED_ROUNDS = 2, 16
HIDDEN = PRESETS["mini"][1]
# plm-ray's CPU bucket is whatever its hardware layer chooses for CPU workers (Hardware.reduce_bucket)
BUCKETS = {"hidden²": HIDDEN * HIDDEN, "plm-ray CPU": None}


@dataclass(frozen=True)
class FixedBucket(Hardware):
    """CPU hardware with another reduce bucket than plm-ray's, for the comparison."""

    bucket: int = 0

    def reduce_bucket(self, hidden: int, zero_stage: int) -> int:
        return self.bucket


def rank_main(rank: int, n_tokens: int, autocast: bool, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    engines = {}
    precision = "bf16-mixed" if autocast else "fp32"
    for name, bucket in BUCKETS.items():
        hardware = (
            Hardware(False, precision, "eager", 1)
            if bucket is None
            else FixedBucket(False, precision, "eager", 1, bucket)
        )
        engines[name] = Engine(SparseMLM(bert(n_tokens, pad_vocab=True)), engine_spec(2), hardware)
    generator = torch.Generator().manual_seed(rank)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(WARMUP_ROUNDS + TIMED_ROUNDS):
        for name, engine in engines.items():
            step = random_batch(n_tokens, generator)
            start = time.perf_counter()
            engine.train_step(step)
            if round_index >= WARMUP_ROUNDS:
                times[name].append(time.perf_counter() - start)
    result: dict[str, Any] = {}
    for name, engine in engines.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.train_step(random_batch(n_tokens, generator))
        step_seconds = median(times[name])
        result[name] = {
            "bucket_elements": engine.engine.zero_reduce_bucket_size(),
            "collectives_per_step": sum(e.count for e in prof.key_averages() if e.key.startswith("c10d::")),
            "step_ms": step_seconds * 1e3,
            "tokens_per_second": 2 * BATCH * SEQ / step_seconds,
        }
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def main(n_tokens: int, autocast: bool, out_json: str) -> None:
    mp.spawn(rank_main, args=(n_tokens, autocast, free_port(), out_json), nprocs=2)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] == "True", sys.argv[3])
