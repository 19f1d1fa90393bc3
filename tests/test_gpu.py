"""What only a GPU can show, run by `make bench-gpu` on the GPU machine and skipped elsewhere: the
training step never waits for the host, and the GPU engine (autocast bf16 over fp32 weights, fused
AdamW, NCCL) trains, partitions under ZeRO-2 and exports what it trained."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from plm_ray.config import MaskingSection, ModelSection, OptimizerSection
from plm_ray.data.masking import IGNORE, MaskingTables, mask_tokens, masked_capacity
from plm_ray.engine.deepspeed_config import EngineSpec
from plm_ray.hardware import Hardware
from plm_ray.model.build import build_mlm
from plm_ray.model.heads import SparseMLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make bench-gpu runs these there)"),
]
GPU = Hardware(use_gpu=True, precision="bf16", attention=None, threads=0)
VOCAB, SEQ, BATCH = 1000, 64, 16
SPEC = EngineSpec(
    micro_batch=BATCH,
    grad_accum=1,
    zero_stage=0,
    offload=False,
    learning_rate=3e-3,
    weight_decay=0.01,
    warmup_steps=2,
    total_steps=60,
    schedule="linear",
    grad_clip=1.0,
    hidden_size=128,
    optimizer=OptimizerSection(),
)


def tables() -> MaskingTables:
    special = torch.zeros(VOCAB, dtype=torch.bool)
    special[:5] = True
    return MaskingTables(special, torch.zeros(VOCAB, dtype=torch.bool), mask_id=3, vocab_size=VOCAB).to(
        torch.device("cuda")
    )


def batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), device="cuda", generator=generator)
    cfg = MaskingSection()
    return mask_tokens(ids, tables(), cfg, generator, capacity=masked_capacity(ids.numel(), cfg))


def engine(stage: int = 0):
    from plm_ray.engine.engine import Engine

    torch.manual_seed(0)
    model = build_mlm(ModelSection(preset="tiny", dropout=0.0), VOCAB, SEQ, 0)
    return model, Engine(SparseMLM(model), replace(SPEC, zero_stage=stage), GPU)


def test_masking_and_the_sparse_head_never_wait_for_the_host():
    """Fixed slots: masking, the forward pass and the backward pass queue on the GPU without one
    device-to-host copy (a data-dependent shape would be one each step)."""
    model = SparseMLM(build_mlm(ModelSection(preset="tiny", dropout=0.0), VOCAB, SEQ, 0).cuda())
    generator = torch.Generator(device="cuda").manual_seed(0)
    batch(generator)  # first calls allocate and pick kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(**batch(generator))
        out["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out["loss"]).item()


def test_the_engine_step_never_waits_for_the_host(one_rank_group: None):
    """plm-ray's engine step on the GPU (autocast, fused AdamW, clipping, DeepSpeed's scheduler) runs
    ahead of the GPU: no synchronization inside a step."""
    _, gpu_engine = engine()
    generator = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(3):
        gpu_engine.train_step(batch(generator))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            gpu_engine.train_step(batch(generator))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_gpu_engine_trains_in_autocast_with_fused_adamw(one_rank_group: None, tmp_path: Path):
    """One batch again and again: the loss falls. Weights and optimizer state stay fp32 (autocast),
    the optimizer is torch's fused AdamW, and the export reproduces the live loss."""
    model, gpu_engine = engine()
    assert gpu_engine.autocast and not gpu_engine.engine.bfloat16_enabled()
    optimizer = gpu_engine.engine.optimizer
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    fixed = batch(torch.Generator(device="cuda").manual_seed(1))
    losses = [gpu_engine.train_step(fixed)["loss"].item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses
    live = gpu_engine.forward(fixed)["loss"].item()
    gpu_engine.export(model, tmp_path, write=True)
    from transformers import AutoModelForMaskedLM

    reloaded = SparseMLM(AutoModelForMaskedLM.from_pretrained(tmp_path).cuda()).eval()
    with torch.no_grad(), gpu_engine.autocast_context():
        assert abs(reloaded(**fixed)["loss"].item() - live) < 1e-3


def test_zero2_at_one_rank_follows_zero0(one_rank_group: None):
    """ZeRO-2 (NCCL buckets, overlapped reduction) at one rank takes the same steps as ZeRO-0."""
    trajectories = []
    for stage in (0, 2):
        _, gpu_engine = engine(stage)
        generator = torch.Generator(device="cuda").manual_seed(2)
        trajectories.append([gpu_engine.train_step(batch(generator))["loss"].item() for _ in range(10)])
    assert trajectories[0] == pytest.approx(trajectories[1], rel=2e-2), trajectories


def test_padding_slots_carry_no_label():
    out = batch(torch.Generator(device="cuda").manual_seed(3))
    real = out["labels"] != IGNORE
    assert 0 < real.sum().item() < len(out["labels"])
    assert not real[real.sum().item() :].any(), "the selected positions come first"
