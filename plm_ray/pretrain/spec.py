"""The engine spec pre-training gives DeepSpeed, from the config: light (no DeepSpeed import), so the
driver checks a user's DeepSpeed JSON against it and the workers build their engine from it."""

from __future__ import annotations

from typing import Any

from plm_ray.config import Config, resolve_zero_stage
from plm_ray.engine.deepspeed_config import EngineSpec


def engine_spec(cfg: Config, world: int, total_steps: int, hidden: int, user: dict[str, Any]) -> EngineSpec:
    p = cfg.pretrain
    return EngineSpec(
        micro_batch=p.batch_size,
        grad_accum=p.grad_accum,
        zero_stage=resolve_zero_stage(p.zero_stage, world, p.offload),
        offload=p.offload,
        learning_rate=p.learning_rate,
        weight_decay=p.weight_decay,
        warmup_steps=p.warmup_steps,
        total_steps=total_steps,
        schedule=p.schedule,
        grad_clip=p.grad_clip,
        hidden_size=hidden,
        optimizer=cfg.optimizer,
        compile=p.compile,
        user=user,
    )
