"""The DeepSpeed config the one engine layer builds from an engine spec and the hardware."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from plm_ray.config import OptimizerSection
from plm_ray.engine.deepspeed_config import EngineSpec, deepspeed_config
from plm_ray.hardware import GLOO_MIN_BUCKET, NCCL_BUCKET, Hardware

SPEC = EngineSpec(
    micro_batch=32,
    grad_accum=1,
    zero_stage=2,
    offload=False,
    learning_rate=1e-4,
    weight_decay=0.01,
    warmup_steps=10,
    total_steps=100,
    schedule="linear",
    grad_clip=1.0,
    hidden_size=256,
    optimizer=OptimizerSection(),
)
CPU, GPU = Hardware(False, "fp32", "eager", 2), Hardware(True, "bf16", None, 0)


def config(stage: int, hardware: Hardware, **changes: Any) -> dict[str, Any]:
    return deepspeed_config(replace(SPEC, zero_stage=stage, **changes), hardware)


@pytest.mark.parametrize(
    ("precision", "stage", "mode"),
    [
        ("bf16", 0, "torch_autocast"),
        ("bf16", 2, "torch_autocast"),
        ("bf16", 3, "bf16"),
        ("fp16", 2, "fp16"),
        ("fp32", 2, None),
    ],
)
@pytest.mark.parametrize("use_gpu", [False, True])
def test_precision_picks_one_deepspeed_mode(precision: str, stage: int, mode: str | None, use_gpu: bool):
    """bf16 is torch autocast over fp32 weights on either device, except under ZeRO-3 (the memory
    stage), which keeps bf16 weights; fp16 is DeepSpeed's fp16 mode; fp32 none. Never two at once."""
    built = config(stage, Hardware(use_gpu, precision, None, 0))
    enabled = [key for key in ("torch_autocast", "bf16", "fp16") if built[key]["enabled"]]
    assert enabled == ([mode] if mode else [])


@pytest.mark.parametrize("stage", [1, 2])
def test_buckets_fit_the_link(stage: int):
    """gloo has a fixed cost per collective, so CPU workers fill buckets of megabytes; NCCL gets
    buckets of tens of millions of elements that overlap the backward pass; ZeRO-3 (whose point is
    small buffers) keeps the model-sized hidden²; a model wider than the floor gets hidden²."""
    assert config(stage, CPU)["zero_optimization"]["reduce_bucket_size"] == GLOO_MIN_BUCKET
    assert "overlap_comm" not in config(stage, CPU)["zero_optimization"]
    assert config(stage, CPU, hidden_size=4096)["zero_optimization"]["reduce_bucket_size"] == 4096**2
    gpu = config(stage, GPU)["zero_optimization"]
    assert gpu["reduce_bucket_size"] == gpu["allgather_bucket_size"] == NCCL_BUCKET and gpu["overlap_comm"]
    assert config(3, CPU)["zero_optimization"]["reduce_bucket_size"] == 256**2
    assert config(3, GPU)["zero_optimization"]["reduce_bucket_size"] == 256**2


def test_only_offload_takes_deepspeeds_optimizer():
    """torch's AdamW is the engine's (fused on GPUs); ZeRO-Offload needs DeepSpeed's CPU Adam, built
    from this config with the optimizer section's betas and eps."""
    assert "optimizer" not in config(2, GPU)
    offloaded = config(2, CPU, offload=True, optimizer=OptimizerSection(betas=[0.9, 0.95], eps=1e-8))
    assert offloaded["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert offloaded["optimizer"]["params"] == {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.01}
    assert "optimizer" not in config(0, CPU, offload=True), "offload needs a ZeRO stage; stage 0 ignores it"


def test_engine_builds_torch_adamw_with_the_configured_betas(one_rank_group: None):
    """A real one-rank engine on CPU: the optimizer DeepSpeed steps is torch's AdamW with the
    optimizer section's betas and eps and plm-ray's weight-decay groups."""
    from plm_ray.engine.engine import Engine
    from plm_ray.model.heads import Classifier

    from .test_model import tiny_classifier

    spec = replace(SPEC, zero_stage=0, optimizer=OptimizerSection(betas=[0.8, 0.9], eps=1e-7))
    engine = Engine(Classifier(tiny_classifier()), spec, CPU)
    optimizer = engine.engine.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {((0.8, 0.9), 1e-7)}
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.01]
