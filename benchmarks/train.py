"""Benchmarks 1 (training step) and 3 (scaling).

1. The same BERT (4 layers / 256 hidden, vocab 30,522, 32 x 128, dropout 0.1) trained by
   (a) plm-ray's own pre-training command: Ray Train + DeepSpeed, one worker with both CPUs, in its
       default precision (bf16-mixed, autocast, on a CPU with native bf16) and ZeRO stage (auto: 0 on
       one worker), (a2) the same with ZeRO-2 forced, (a32) the same in fp32, and (a0) the same without dropout (as
       plm-ray's real-data recipe pre-trains, after Cramming),
   (b) Hugging Face `Trainer` + `DataCollatorForLanguageModeling` (the run_mlm.py recipe, fp32 as it
       defaults to) and (b16) the same with `bf16=True` (HF's CPU autocast),
   (c) a plain PyTorch loop with the same collator and the model's dense MLM head (fp32),
   (d) a plain PyTorch loop with plm-ray's masking and sparse head (fp32), to show the engine's cost,
   and (d16) the same under bf16 autocast.
   (a) and (b), the headline ratio, run first and again last, and each side is the median of its two.
1b. Where a step of (d) and (d16) goes, by kind of work (benchmarks/profile.py).
3. plm-ray pre-training with 1 worker vs 2 workers, one CPU each: both ZeRO-2 (like for like) and
   as plm-ray runs by default (ZeRO-0 on one worker), beside this machine's ceiling for it: the plain
   loop in two independent processes at once against one alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function
from transformers import (
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from benchmarks.common import BATCH, MASK_RATE, MODEL_SETS, ROOT, SEQ, median, plm_ray, steady_tokens_per_second
from benchmarks.profile import OPTIMIZER_SCOPE, step_profile
from plm_ray.config import MaskingSection, ModelSection
from plm_ray.data.masking import MaskingTables, mask_tokens
from plm_ray.data.tokenizer import load_tokenizer
from plm_ray.model.build import build_config, padded_vocab
from plm_ray.model.heads import SparseMLM

WARMUP_STEPS, TIMED_STEPS, PROFILED_STEPS = 3, 8, 4


def plm_ray_pretrain(store: Path, corpus: str, run: str, workers: int, cpus: int, extra: list[str]) -> dict[str, Any]:
    return plm_ray(
        "pretrain",
        store,
        [
            *MODEL_SETS,
            f"run.name={run}",
            f"data.corpus={corpus}",
            f"pretrain.num_workers={workers}",
            f"pretrain.cpus_per_worker={cpus}",
            "pretrain.max_steps=40",
            "pretrain.log_every_steps=5",
            "pretrain.warmup_steps=5",
            *extra,
        ],
    )


def bert(n_tokens: int, pad_vocab: bool) -> BertForMaskedLM:
    """The benchmark model from plm-ray's own preset code, so every recipe trains the same shape.
    run_mlm.py sizes the embeddings to the tokenizer; plm-ray pads them to a multiple of 64."""
    config = build_config(ModelSection(preset="mini"), n_tokens, SEQ, pad_id=0)
    config.vocab_size = padded_vocab(n_tokens) if pad_vocab else n_tokens
    torch.manual_seed(0)
    return BertForMaskedLM(config)


def tokenizer_set(store: Path) -> str:
    """Later runs load the WordPiece that benchmark 1's run trained, instead of training it again."""
    return f"tokenizer.path={store / 'bench-train' / 'tokenizer'}"


def blocks_for(tokenizer: Any, corpus_file: Path, n: int) -> np.ndarray:
    """`n` packed [CLS] ... blocks of SEQ tokens from the start of one corpus shard."""
    ids: list[int] = []
    with corpus_file.open(encoding="utf-8") as f:
        for line in f:
            ids += tokenizer(line.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
            if len(ids) >= n * (SEQ - 1):
                break
    body = np.asarray(ids[: n * (SEQ - 1)], dtype=np.int64).reshape(n, SEQ - 1)
    return np.concatenate([np.full((n, 1), tokenizer.cls_token_id), body], axis=1)


class StepTimes(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


def hf_trainer(tokenizer: Any, blocks: np.ndarray, threads: int, bf16: bool) -> float:
    """Tokens/s of `Trainer` + `DataCollatorForLanguageModeling`: median of step-to-step intervals,
    so the collator and data loading sit inside each interval as they do in run_mlm.py."""
    torch.set_num_threads(threads)
    rows = [{"input_ids": b.tolist()} for b in blocks]
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            max_steps=WARMUP_STEPS + TIMED_STEPS + 1,
            learning_rate=1e-4,
            warmup_steps=2,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=bf16,
            dataloader_num_workers=0,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MASK_RATE)
        trainer = Trainer(
            model=bert(len(tokenizer), pad_vocab=False),
            args=args,
            train_dataset=rows,
            data_collator=collator,
            callbacks=[timer],
        )
        trainer.train()
    intervals = np.diff(timer.ends)[WARMUP_STEPS:]
    return BATCH * SEQ / median(list(intervals))


def plain_step(tokenizer: Any, blocks: np.ndarray, threads: int, sparse: bool, autocast: bool) -> Callable[[int], None]:
    """Step i of a hand-written loop: AdamW, clipping, and either the HF collator + dense head or
    plm-ray's masking + sparse head, in fp32 or under bf16 autocast (plm-ray's CPU bf16), data
    preparation included."""
    torch.set_num_threads(threads)
    model = bert(len(tokenizer), pad_vocab=sparse)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tables = MaskingTables.from_tokenizer(tokenizer)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MASK_RATE)
    sparse_model = SparseMLM(model)

    def step(i: int) -> None:
        chunk = torch.from_numpy(blocks[(i * BATCH) % len(blocks) :][:BATCH])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if sparse:
                loss = sparse_model(**mask_tokens(chunk, tables, MaskingSection(probability=MASK_RATE)))["loss"]
            else:
                batch = collator([{"input_ids": row} for row in chunk.tolist()])
                loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        with record_function(OPTIMIZER_SCOPE):  # a label for benchmark 1b's profile, nothing when not profiling
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def plain_loop(tokenizer: Any, blocks: np.ndarray, threads: int, sparse: bool, autocast: bool = False) -> float:
    """Tokens/s of `plain_step`: the median per-step time after warm-up."""
    step = plain_step(tokenizer, blocks, threads, sparse, autocast)
    times = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return BATCH * SEQ / median(times[WARMUP_STEPS:])


def plain_profile(tokenizer: Any, blocks: np.ndarray, threads: int, autocast: bool) -> dict[str, float]:
    """Benchmark 1b for (d) or (d16): milliseconds per step by kind of work."""
    step = plain_step(tokenizer, blocks, threads, sparse=True, autocast=autocast)
    for i in range(WARMUP_STEPS):
        step(i)
    return step_profile(step, WARMUP_STEPS, PROFILED_STEPS)


def run_training(store: Path, shard: Path, threads: int) -> dict[str, Any]:
    """Benchmark 1. (a) also trains the 30,522-token WordPiece the other recipes then load."""
    # The headline pair, (a) and (b), is measured first and last in the order A B ... B A: a machine
    # whose speed drifts during the benchmark's ~10 minutes then favours neither side.
    a = plm_ray_pretrain(store, str(shard), "bench-train", 1, threads, [])
    tokenizer = load_tokenizer(str(store / "bench-train" / "tokenizer"))
    blocks = blocks_for(tokenizer, shard, BATCH * (WARMUP_STEPS + TIMED_STEPS + 2))
    b = [hf_trainer(tokenizer, blocks, threads, bf16=False)]
    fp32 = [tokenizer_set(store), "pretrain.precision=fp32"]
    zero2 = [tokenizer_set(store), "pretrain.zero_stage=2"]
    a2 = plm_ray_pretrain(store, str(shard), "bench-zero2", 1, threads, zero2)
    a32 = plm_ray_pretrain(store, str(shard), "bench-fp32", 1, threads, fp32)
    a0 = plm_ray_pretrain(store, str(shard), "bench-nodrop", 1, threads, [tokenizer_set(store), "model.dropout=0"])
    rates = {
        "b16": hf_trainer(tokenizer, blocks, threads, bf16=True),
        "c": plain_loop(tokenizer, blocks, threads, sparse=False),
        "d": plain_loop(tokenizer, blocks, threads, sparse=True),
        "d16": plain_loop(tokenizer, blocks, threads, sparse=True, autocast=True),
    }
    b.append(hf_trainer(tokenizer, blocks, threads, bf16=False))
    a_again = plm_ray_pretrain(store, str(shard), "bench-train-again", 1, threads, [tokenizer_set(store)])
    a_runs = [steady_tokens_per_second(run["history"], skip_steps=10) for run in (a, a_again)]
    return {
        "a": median(a_runs),
        "a2": steady_tokens_per_second(a2["history"], skip_steps=10),
        "a32": steady_tokens_per_second(a32["history"], skip_steps=10),
        "a0": steady_tokens_per_second(a0["history"], skip_steps=10),
        "b": median(b),
        **rates,
        "d_profile": plain_profile(tokenizer, blocks, threads, autocast=False),
        "d16_profile": plain_profile(tokenizer, blocks, threads, autocast=True),
        "vocab": len(tokenizer),
        "a_runs": a_runs,
        "b_runs": b,
        "a_result": a,
    }


def run_scaling(store: Path, shard: Path, autocast: bool) -> dict[str, float]:
    """Benchmark 3: weak scaling, each worker one CPU and batch 32 (global batch doubles), ZeRO-2 on
    both sides and, beside it, one worker at plm-ray's default ZeRO-0; then the machine's own ceiling:
    the same step in two independent one-thread processes at once against one alone (no Ray, no
    gradient exchange), which is all a second core can add on this machine."""
    # Each side measured twice in the order A B B A (and the ceiling's "alone" before and after), so
    # a machine whose speed drifts during the benchmark does not favour one side.
    sides = {"1": (1, "2"), "2": (2, "2"), "1_auto": (1, "-1")}  # name: (workers, ZeRO stage)
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for i, name in enumerate(("1", "2", "1_auto", "2", "1", "1_auto")):
        workers, stage = sides[name]
        sets = [tokenizer_set(store), f"pretrain.zero_stage={stage}"]
        result = plm_ray_pretrain(store, str(shard), f"bench-scale-{i}-{name}", workers, 1, sets)
        runs[name].append(steady_tokens_per_second(result["history"], skip_steps=10))
    rates = {name: median(values) for name, values in runs.items()}
    child = ["-m", "benchmarks.train", str(store / "bench-train" / "tokenizer"), str(shard), str(autocast)]
    first = _plain_rates([child])[0]
    together = sum(_plain_rates([child, child]))
    alone = median([first, _plain_rates([child])[0]])
    return {
        **rates,
        "efficiency": rates["2"] / (2 * rates["1"]),
        "efficiency_auto": rates["2"] / (2 * rates["1_auto"]),
        "plain_1": alone,
        "plain_2": together,
        "ceiling": together / (2 * alone),
    }


def _plain_rates(children: list[list[str]]) -> list[float]:
    """Start every child at once (each a one-thread plain loop); their tokens/s."""
    procs = [
        subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True) for args in children
    ]
    outs = [proc.communicate(timeout=900)[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise RuntimeError(f"plain-loop child failed: {outs}")
    return [json.loads(out.strip().splitlines()[-1])["tokens_per_second"] for out in outs]


if __name__ == "__main__":  # a child of _plain_rates: python -m benchmarks.train TOKENIZER_DIR SHARD AUTOCAST
    tokenizer_dir, shard_path, autocast_flag = sys.argv[1:]
    loaded = load_tokenizer(tokenizer_dir)
    chunk_blocks = blocks_for(loaded, Path(shard_path), BATCH * (WARMUP_STEPS + TIMED_STEPS + 2))
    rate = plain_loop(loaded, chunk_blocks, 1, sparse=True, autocast=autocast_flag == "True")
    print(json.dumps({"tokens_per_second": rate}))
