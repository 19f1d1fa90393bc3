"""The DeepSpeed config the one engine layer builds from an engine spec and the hardware."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from plm_ray.config import ConfigError, OptimizerSection
from plm_ray.engine.deepspeed_config import deepspeed_config
from plm_ray.hardware import GLOO_MIN_BUCKET, NCCL_BUCKET, Hardware

from .conftest import engine_spec

SPEC = engine_spec()
CPU, GPU = Hardware(False, "fp32", "eager", 2), Hardware(True, "bf16", None, 0)


def config(stage: int, hardware: Hardware, **changes: Any) -> dict[str, Any]:
    return deepspeed_config(replace(SPEC, zero_stage=stage, **changes), hardware)


@pytest.mark.parametrize(
    ("precision", "mode"),
    [("bf16-mixed", "torch_autocast"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", None)],
)
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_precision_picks_one_deepspeed_mode(precision: str, mode: str | None, stage: int):
    """bf16-mixed is torch autocast over fp32 weights, bf16 DeepSpeed's bf16 weights, fp16 its fp16
    mode, fp32 none; at every ZeRO stage, never two at once."""
    built = config(stage, Hardware(True, precision, None, 0))
    enabled = [key for key in ("torch_autocast", "bf16", "fp16") if built[key]["enabled"]]
    assert enabled == ([mode] if mode else [])


def test_auto_precision_and_refusals(monkeypatch: pytest.MonkeyPatch):
    """auto: bf16-mixed on GPUs with bf16, fp16 on older GPUs; bf16-mixed on CPUs with native bf16,
    fp32 on others, where an explicit bf16 is refused rather than emulated slowly."""
    from plm_ray import hardware

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert hardware.resolve_precision("auto", use_gpu=True) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert hardware.resolve_precision("auto", use_gpu=True) == "fp16"
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert hardware.resolve_precision("auto", use_gpu=False) == "bf16-mixed"
    assert hardware.resolve_precision("bf16", use_gpu=False) == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert hardware.resolve_precision("auto", use_gpu=False) == "fp32"
    with pytest.raises(ConfigError, match="precision bf16-mixed: this CPU has no native bf16"):
        hardware.resolve_precision("bf16-mixed", use_gpu=False)
    with pytest.raises(ConfigError, match="precision fp16 needs a GPU"):
        hardware.resolve_precision("fp16", use_gpu=False)


def test_deepspeeds_synchronizing_throughput_timer_is_off():
    """DeepSpeed's throughput timer synchronizes the device twice a micro-step; plm-ray keeps it off."""
    assert config(0, GPU)["timers"] == {"throughput": {"enabled": False}}


@pytest.mark.parametrize("stage", [1, 2])
def test_buckets_fit_the_link(stage: int):
    """gloo has a fixed cost per collective, so CPU workers fill buckets of megabytes; NCCL gets
    buckets of tens of millions of elements; ZeRO-3 (whose point is small buffers) keeps the
    model-sized hidden²; a model wider than the floor gets hidden². No overlap_comm: DeepSpeed's
    overlapped path synchronizes the device at every bucket."""
    assert config(stage, CPU)["zero_optimization"]["reduce_bucket_size"] == GLOO_MIN_BUCKET
    assert "overlap_comm" not in config(stage, CPU)["zero_optimization"]
    assert config(stage, CPU, hidden_size=4096)["zero_optimization"]["reduce_bucket_size"] == 4096**2
    gpu = config(stage, GPU)["zero_optimization"]
    assert gpu["reduce_bucket_size"] == gpu["allgather_bucket_size"] == NCCL_BUCKET and "overlap_comm" not in gpu
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


def test_a_users_deepspeed_json_merges_over_the_generated_config():
    """Its own keys win, "auto" (a value or a whole HF-style block) keeps plm-ray's, and repeating
    plm-ray's own value is allowed; a conflicting value is refused (tests/test_refusals.py)."""
    ours = deepspeed_config(SPEC, CPU)
    user = {
        "zero_optimization": {"stage": 2, "reduce_bucket_size": 12345, "contiguous_gradients": False},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_clipping": "auto",
        "scheduler": {"type": "auto", "params": {"warmup_num_steps": "auto"}},
        "activation_checkpointing": {"partition_activations": True},
    }
    merged = deepspeed_config(replace(SPEC, user=user), CPU)
    zero = {**ours["zero_optimization"], "reduce_bucket_size": 12345, "contiguous_gradients": False}
    assert merged["zero_optimization"] == zero
    assert merged["activation_checkpointing"] == {"partition_activations": True}
    for kept in ("train_micro_batch_size_per_gpu", "gradient_clipping", "scheduler", "torch_autocast"):
        assert merged[kept] == ours[kept], kept
