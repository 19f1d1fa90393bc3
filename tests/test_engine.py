"""The DeepSpeed config the one engine layer builds."""

from __future__ import annotations

from typing import Any

import pytest

from plm_ray.engine import GLOO_MIN_BUCKET, deepspeed_config


def zero_section(stage: int, use_gpu: bool, hidden: int = 256) -> dict[str, Any]:
    return deepspeed_config(
        micro_batch=32,
        grad_accum=1,
        zero_stage=stage,
        offload=False,
        precision="fp32",
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_steps=10,
        total_steps=100,
        schedule="linear",
        grad_clip=1.0,
        hidden_size=hidden,
        autocast=False,
        use_gpu=use_gpu,
    )["zero_optimization"]


@pytest.mark.parametrize("stage", [1, 2])
def test_gloo_exchanges_gradients_in_few_large_buckets(stage: int):
    """Each gloo collective has a fixed cost, so CPU workers fill buckets of megabytes; GPUs and
    ZeRO-3 (whose point is small buffers) keep the model-sized hidden² bucket."""
    assert zero_section(stage, use_gpu=False)["reduce_bucket_size"] == GLOO_MIN_BUCKET
    assert zero_section(stage, use_gpu=False, hidden=4096)["reduce_bucket_size"] == 4096**2
    assert zero_section(stage, use_gpu=True)["reduce_bucket_size"] == 256**2
    assert zero_section(3, use_gpu=False)["reduce_bucket_size"] == 256**2
