"""Where a stage's training runs, decided in one place: GPU or CPU, and everything that follows from
it (precision and autocast, attention kernels, the collective backend, gradient buckets, threads,
fixed or exact shapes, the optimizer's kernel). Pre-training workers and sweep trials resolve one
`Hardware` each from the config, where the device is (the driver may have no GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plm_ray.config import Config, ConfigError

# Smallest ZeRO-1/2 gradient bucket (elements) over gloo (CPU workers), where each collective has a
# fixed cost: hidden² buckets made a step dozens of collectives (BENCHMARKS.md, benchmark 3b).
GLOO_MIN_BUCKET = 4 * 2**20
# ZeRO-1/2 bucket over NCCL: a few buckets a step for BERT-base, each large enough to run near link
# bandwidth, small enough to overlap the backward pass (BENCHMARKS.md, the multi-GPU model).
NCCL_BUCKET = 50_000_000


def collective_backend(use_gpu: bool) -> str:
    return "nccl" if use_gpu else "gloo"


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 / AMX); elsewhere bf16 is emulated, slower than fp32."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, use_gpu: bool) -> str:
    """`auto`: bf16-mixed where the GPU or CPU has bf16, fp16 on older GPUs, else fp32: what measured
    fastest (BENCHMARKS.md; DeepSpeed's bf16 mode is host-bound on one GPU). An explicit choice wins,
    but what the hardware cannot do is refused rather than emulated slowly."""
    if requested == "auto":
        if use_gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16-mixed" if cpu_has_bf16() else "fp32"
    if not use_gpu and requested == "fp16":
        raise ConfigError("precision fp16 needs a GPU; use bf16-mixed, bf16, fp32 or auto on CPU")
    if not use_gpu and requested.startswith("bf16") and not cpu_has_bf16():
        raise ConfigError(f"precision {requested}: this CPU has no native bf16 (AVX512-BF16 or AMX); use fp32 or auto")
    return requested


@dataclass(frozen=True)
class Hardware:
    use_gpu: bool
    # As run: fp32; bf16-mixed, torch autocast over fp32 weights (the HF Trainer's bf16=True: matmuls
    # in bf16, weights, gradients and AdamW state in fp32); bf16, DeepSpeed's bf16 mode (weights,
    # activations and gradients in bf16, the fp32 master copy in the optimizer: less memory, but many
    # small kernels and device syncs a step); fp16, DeepSpeed's fp16 mode with loss scaling.
    precision: str
    attention: str | None  # transformers' attn_implementation; None: its default (SDPA where the model has it)
    threads: int  # CPU: one intra-op thread per reserved CPU; 0 on GPUs (torch's default)

    @property
    def device_type(self) -> str:
        return "cuda" if self.use_gpu else "cpu"

    @property
    def backend(self) -> str:
        return collective_backend(self.use_gpu)

    @property
    def fixed_shapes(self) -> bool:
        """Steps of one shape (masking's fixed slots): a GPU runs ahead of the host only without
        data-dependent shapes; on a CPU the host does the work itself and exact shapes cost less."""
        return self.use_gpu

    def reduce_bucket(self, hidden: int, zero_stage: int) -> int:
        """ZeRO's gradient bucket (elements). ZeRO-3 keeps hidden²: its buffers are what it exists to
        shrink. ZeRO-1/2 take GLOO_MIN_BUCKET or NCCL_BUCKET, or hidden² if that is larger."""
        if zero_stage == 3:
            return hidden * hidden
        return max(hidden * hidden, NCCL_BUCKET if self.use_gpu else GLOO_MIN_BUCKET)

    def apply(self) -> None:
        """This process's CPU threads, whatever the worker's environment says."""
        if self.threads:
            torch.set_num_threads(self.threads)


def resolve(use_gpu: bool, precision: str, attention: str, cpus: int) -> Hardware:
    """The hardware of one training process: `attention` auto is transformers' default (SDPA) on GPUs
    and eager on CPUs, where it trains faster at BERT's head sizes (BENCHMARKS.md)."""
    chosen = (None if use_gpu else "eager") if attention == "auto" else attention
    return Hardware(use_gpu, resolve_precision(precision, use_gpu), chosen, 0 if use_gpu else cpus)


def expected(use_gpu: bool, precision: str) -> Hardware:
    """The hardware the driver expects its workers to resolve, for checks made before anything starts
    (the driver may have no GPU): auto on a GPU is taken as bf16-mixed, what GPUs with bf16 resolve."""
    chosen = precision if precision != "auto" else ("bf16-mixed" if use_gpu else resolve_precision("auto", False))
    if not use_gpu:
        resolve_precision(chosen, False)  # refuse what this CPU cannot do, before anything starts
    return Hardware(use_gpu, chosen, None, 0)


def pretraining(cfg: Config) -> Hardware:
    p = cfg.pretrain
    return resolve(p.use_gpu, p.precision, cfg.model.attention, p.cpus_per_worker)


def trial(cfg: Config) -> Hardware:
    s = cfg.sweep
    return resolve(s.gpus_per_trial > 0, s.precision, cfg.model.attention, s.cpus_per_trial)
