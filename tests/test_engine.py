"""The DeepSpeed config the one engine layer builds."""

from __future__ import annotations

from typing import Any

import pytest

from plm_ray.engine import GLOO_MIN_BUCKET, deepspeed_config


def config(stage: int, use_gpu: bool, hidden: int = 256, precision: str = "fp32") -> dict[str, Any]:
    return deepspeed_config(
        micro_batch=32,
        grad_accum=1,
        zero_stage=stage,
        offload=False,
        precision=precision,
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_steps=10,
        total_steps=100,
        schedule="linear",
        grad_clip=1.0,
        hidden_size=hidden,
        use_gpu=use_gpu,
    )


def zero_section(stage: int, use_gpu: bool, hidden: int = 256) -> dict[str, Any]:
    return config(stage, use_gpu, hidden)["zero_optimization"]


@pytest.mark.parametrize(
    ("precision", "use_gpu", "mode"),
    [("bf16", False, "torch_autocast"), ("bf16", True, "bf16"), ("fp16", True, "fp16"), ("fp32", False, None)],
)
def test_precision_picks_one_deepspeed_mode(precision: str, use_gpu: bool, mode: str | None):
    """CPU bf16 is torch autocast over fp32 weights, GPUs train in DeepSpeed's bf16 or fp16 mode, fp32 in
    none of them; never two at once."""
    built = config(2, use_gpu, precision=precision)
    enabled = [key for key in ("torch_autocast", "bf16", "fp16") if built[key]["enabled"]]
    assert enabled == ([mode] if mode else [])


@pytest.mark.parametrize("stage", [1, 2])
def test_gloo_exchanges_gradients_in_few_large_buckets(stage: int):
    """Each gloo collective has a fixed cost, so CPU workers fill buckets of megabytes; GPUs and
    ZeRO-3 (whose point is small buffers) keep the model-sized hidden² bucket."""
    assert zero_section(stage, use_gpu=False)["reduce_bucket_size"] == GLOO_MIN_BUCKET
    assert zero_section(stage, use_gpu=False, hidden=4096)["reduce_bucket_size"] == 4096**2
    assert zero_section(stage, use_gpu=True)["reduce_bucket_size"] == 256**2
    assert zero_section(3, use_gpu=False)["reduce_bucket_size"] == 256**2
