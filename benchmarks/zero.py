"""plm-ray's DeepSpeed config for the benchmarks that build its engine directly, without the CLI:
4 (ZeRO memory) and 3b (the ZeRO-2 gradient exchange). Kept apart from `common` so that only these
two import DeepSpeed."""

from __future__ import annotations

from typing import Any

from benchmarks.common import BATCH
from plm_ray.config import PRESETS
from plm_ray.engine import deepspeed_config


def engine_config(zero_stage: int, precision: str, use_gpu: bool) -> dict[str, Any]:
    """The config plm-ray builds for the benchmark BERT (batch 32, no accumulation) on CPU workers
    (`use_gpu=False`: bf16 is autocast over fp32 weights, gloo-sized buckets) or on GPUs (`True`:
    DeepSpeed's bf16 weights, `hidden²` buckets); either runs on this CPU."""
    return deepspeed_config(
        micro_batch=BATCH,
        grad_accum=1,
        zero_stage=zero_stage,
        offload=False,
        precision=precision,
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_steps=1,
        total_steps=100,
        schedule="linear",
        grad_clip=1.0,
        hidden_size=PRESETS["mini"][1],
        use_gpu=use_gpu,
    )
