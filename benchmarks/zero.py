"""plm-ray's engine for the benchmarks that build it directly, without the CLI: 4 (ZeRO memory) and
3b (the ZeRO-2 gradient exchange). Kept apart from `common` so that only these two import DeepSpeed."""

from __future__ import annotations

import torch

from benchmarks.common import BATCH, MASK_RATE, SEQ
from plm_ray.config import PRESETS, OptimizerSection
from plm_ray.engine.deepspeed_config import EngineSpec


def engine_spec(zero_stage: int) -> EngineSpec:
    """What plm-ray's pre-training would give the engine for the benchmark BERT: batch 32, no
    accumulation, the default optimizer."""
    return EngineSpec(
        micro_batch=BATCH,
        grad_accum=1,
        zero_stage=zero_stage,
        offload=False,
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_steps=1,
        total_steps=100,
        schedule="linear",
        grad_clip=1.0,
        hidden_size=PRESETS["mini"][1],
        optimizer=OptimizerSection(),
    )


def random_batch(n_tokens: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch of random ids, MASK_RATE of them to predict (exact positions, as on CPU)."""
    ids = torch.randint(5, n_tokens, (BATCH, SEQ), generator=generator)
    positions = (torch.rand(ids.numel(), generator=generator) < MASK_RATE).nonzero().squeeze(1)
    return {"input_ids": ids, "mlm_positions": positions, "labels": ids.flatten()[positions]}
