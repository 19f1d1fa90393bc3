"""The in-process pre-training recipes on one GPU, all on the same BERT-base and the same 256 x 128
tokens a step: the HF Trainer with run_mlm's collator, a plain PyTorch loop, and plm-ray's engine
(ZeRO-0/2, one micro-batch or accumulation) with a kernel profile of its step. Each is timed over a
window of steps after warm-up, with the GPU synchronized at both ends."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from benchmarks.gpu.monitor import GpuMonitor
from plm_ray import hardware as hw
from plm_ray.config import Config, MaskingSection
from plm_ray.data.masking import MaskingTables, mask_tokens, masked_capacity
from plm_ray.engine.engine import Engine, ensure_process_group
from plm_ray.model.build import build_config
from plm_ray.model.heads import SparseMLM
from plm_ray.pretrain.spec import engine_spec

BATCH, SEQ, WARMUP, TIMED = 256, 128, 15, 40


def bert_base(cfg: Config, n_tokens: int) -> PreTrainedModel:
    """The preset's model (plm-ray's own config builder), fp32 weights on the GPU."""
    torch.manual_seed(0)
    config = build_config(cfg.model, n_tokens, SEQ, pad_id=0)
    return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").cuda()


def timed(step: Callable[[int], None], monitor: GpuMonitor, tokens_per_step: int) -> dict[str, float]:
    """Tokens/s over TIMED steps after WARMUP, the GPU's busy share and peak memory meanwhile."""
    for i in range(WARMUP):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    for i in range(WARMUP, WARMUP + TIMED):
        step(i)
    torch.cuda.synchronize()
    end = time.time()
    return {
        "tokens_per_second": TIMED * tokens_per_step / (end - start),
        "step_ms": (end - start) / TIMED * 1e3,
        "gpu_busy": monitor.window(start, end)["gpu_busy"],
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


class _Window(TrainerCallback):
    """Wall time between the ends of steps WARMUP and WARMUP + TIMED, the GPU synchronized at both."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in (WARMUP, WARMUP + TIMED):
            torch.cuda.synchronize()
            if state.global_step == WARMUP:
                torch.cuda.reset_peak_memory_stats()
                self.start = time.time()
            else:
                self.end = time.time()


def hf_trainer(
    cfg: Config, tokenizer: Any, blocks: np.ndarray, monitor: GpuMonitor, loader_workers: int
) -> dict[str, float]:
    """run_mlm.py's recipe: Trainer + DataCollatorForLanguageModeling (dense MLM head), bf16=True;
    `loader_workers` 0 is its default (the collator masks in the training process)."""
    window = _Window()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            max_steps=WARMUP + TIMED,
            learning_rate=1e-4,
            warmup_steps=2,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            bf16=True,
            dataloader_num_workers=loader_workers,
        )
        trainer = Trainer(
            model=bert_base(cfg, len(tokenizer)),
            args=args,
            train_dataset=[{"input_ids": b.tolist()} for b in blocks[: BATCH * (WARMUP + TIMED)]],
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
            callbacks=[window],
        )
        trainer.train()
    seconds = window.end - window.start
    return {
        "tokens_per_second": TIMED * BATCH * SEQ / seconds,
        "step_ms": seconds / TIMED * 1e3,
        "gpu_busy": monitor.window(window.start, window.end)["gpu_busy"],
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def plain_loop(cfg: Config, tokenizer: Any, blocks: np.ndarray, monitor: GpuMonitor) -> dict[str, float]:
    """A hand-written loop: bf16 autocast over fp32 weights, fused AdamW, clipping, plm-ray's masking
    (fixed slots) and sparse head; no DeepSpeed, no Ray."""
    model = bert_base(cfg, len(tokenizer))
    sparse = SparseMLM(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tables = MaskingTables.from_tokenizer(tokenizer).to(torch.device("cuda"))
    masking = MaskingSection()
    capacity = masked_capacity(BATCH * SEQ, masking)
    on_gpu = torch.from_numpy(blocks).long().cuda()

    def step(i: int) -> None:
        ids = on_gpu[(i * BATCH) % (len(on_gpu) - BATCH) :][:BATCH]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sparse(**mask_tokens(ids, tables, masking, capacity=capacity))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, monitor, BATCH * SEQ)


def _engine_step(
    cfg: Config, tokenizer: Any, on_gpu: torch.Tensor, micro: int, stage: int, precision: str, compile: bool = False
) -> tuple[Engine, Callable[[int], None]]:
    """plm-ray's engine as the preset builds it at one rank, with `micro`-block micro-batches
    accumulated to BATCH blocks a step, at ZeRO `stage` in `precision` (`compile`: pretrain.compile);
    and one optimizer step of it."""
    hardware = replace(hw.pretraining(cfg), precision=precision)
    ensure_process_group(hardware)
    model = bert_base(cfg, len(tokenizer))
    spec = engine_spec(cfg, 1, 10_000, model.config.hidden_size, {})
    spec = replace(spec, micro_batch=micro, grad_accum=BATCH // micro, zero_stage=stage, compile=compile)
    engine = Engine(SparseMLM(model), spec, hardware)
    tables = MaskingTables.from_tokenizer(tokenizer).to(engine.device)
    capacity = masked_capacity(micro * SEQ, cfg.masking)

    def step(i: int) -> None:
        for k in range(BATCH // micro):
            ids = on_gpu[((i * BATCH) + k * micro) % (len(on_gpu) - micro) :][:micro]
            engine.train_step(mask_tokens(ids, tables, cfg.masking, capacity=capacity))

    return engine, step


# name: (micro-batch, ZeRO stage, precision); the first is the preset's own at one rank (profiled)
ENGINE_VARIANTS = {
    "bf16-mixed_zero0_micro256": (BATCH, 0, "bf16-mixed"),
    "bf16-mixed_zero0_micro128": (BATCH // 2, 0, "bf16-mixed"),
    "bf16-mixed_zero2_micro256": (BATCH, 2, "bf16-mixed"),
    "bf16_zero0_micro256": (BATCH, 0, "bf16"),
}


def engine_variants(cfg: Config, tokenizer: Any, blocks: np.ndarray, monitor: GpuMonitor) -> dict[str, Any]:
    """Time per optimizer step of plm-ray's engine (ENGINE_VARIANTS); where the preset's step goes."""
    on_gpu = torch.from_numpy(blocks).long().cuda()
    results: dict[str, Any] = {}
    for name, (micro, stage, precision) in ENGINE_VARIANTS.items():
        engine, step = _engine_step(cfg, tokenizer, on_gpu, micro, stage, precision)
        results[name] = timed(step, monitor, BATCH * SEQ)
        if not results.get("profile"):
            results["profile"] = profile_steps(step)
        del engine, step
        torch.cuda.empty_cache()
    return results


def engine_compiled(cfg: Config, tokenizer: Any, blocks: np.ndarray, monitor: GpuMonitor) -> dict[str, Any]:
    """The preset's step with `pretrain.compile` (torch.compile through DeepSpeed): what fused kernels
    would add, and the compile's own seconds (paid at every start)."""
    started = time.time()
    on_gpu = torch.from_numpy(blocks).long().cuda()
    _, step = _engine_step(cfg, tokenizer, on_gpu, BATCH, 0, "bf16-mixed", compile=True)
    step(0)
    torch.cuda.synchronize()
    return {"compile_seconds": time.time() - started, **timed(step, monitor, BATCH * SEQ)}


KINDS = {  # kernel name fragments -> kind of work, first match wins
    "nccl": "communication",
    "flash": "attention",
    "fmha": "attention",
    "attention": "attention",
    "adam": "optimizer",
    "gemm": "matmuls",
    "cutlass": "matmuls",
    "xmma": "matmuls",
    "sm90": "matmuls",
    "cublas": "matmuls",
    "norm": "layer norm",
    "gelu": "gelu",
    "softmax": "softmax",
    "cross_entropy": "loss",
    "nll": "loss",
}


def _kind(kernel: str) -> str:
    lowered = kernel.lower()
    return next((kind for fragment, kind in KINDS.items() if fragment in lowered), "other element-wise")


def profile_steps(step: Callable[[int], None], steps: int = 6) -> dict[str, Any]:
    """torch.profiler over `steps` optimizer steps: GPU milliseconds per step by kind of kernel, the
    share of the wall time some kernel ran (busy) and the 25 longest kernels."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for i in range(steps):
            step(1000 + i)
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    intervals = []
    for e in kernels:
        duration = e.time_range.end - e.time_range.start
        by_kind[_kind(e.name)] = by_kind.get(_kind(e.name), 0.0) + duration / steps / 1e3
        by_name[e.name] = by_name.get(e.name, 0.0) + duration / steps / 1e3
        intervals.append((e.time_range.start, e.time_range.end))
    busy, reach = 0.0, float("-inf")
    for begin, end in sorted(intervals):
        busy += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    span = (max(e for _, e in intervals) - min(b for b, _ in intervals)) if intervals else 1.0
    return {
        "ms_per_step_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "kernel_ms_per_step": sum(by_kind.values()),
        "wall_ms_per_step": wall_us / steps / 1e3,
        "busy_fraction": busy / span,
        "kernels_per_step": len(kernels) / steps,
        "top_kernels_ms": dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:25]),
    }
