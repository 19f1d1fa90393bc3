"""The engine spec a trial gives DeepSpeed, from the config and the trial's hyperparameters: light
(no DeepSpeed import), so the driver checks a user's DeepSpeed JSON against it before any trial."""

from __future__ import annotations

from typing import Any

from plm_ray.config import Config
from plm_ray.engine.deepspeed_config import EngineSpec


def engine_spec(cfg: Config, hparams: dict[str, Any], steps: int, hidden: int, user: dict[str, Any]) -> EngineSpec:
    s = cfg.sweep
    return EngineSpec(
        micro_batch=int(hparams["batch_size"]),
        grad_accum=1,
        zero_stage=s.zero_stage,
        offload=False,
        learning_rate=float(hparams["learning_rate"]),
        weight_decay=float(hparams["weight_decay"]),
        warmup_steps=int(float(hparams["warmup_ratio"]) * steps),
        total_steps=steps,
        schedule="linear",
        grad_clip=1.0,
        hidden_size=hidden,
        optimizer=cfg.optimizer,
        user=user,
    )
