"""What an engine trains with (`EngineSpec`, filled by each stage from its config) and the DeepSpeed
config that it and the hardware make. The optimizer is torch's AdamW, built by the engine (engine.py),
except under ZeRO-Offload, which needs DeepSpeed's CPU Adam and so gets it from this config.

A user's own DeepSpeed JSON (`pretrain.deepspeed`, `sweep.deepspeed`) is merged over the generated
config: its keys win, except those plm-ray sets from its own configuration (OWNED), which it may
only repeat or leave as "auto" (the Hugging Face integration's convention); another value is refused
in one line naming both keys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plm_ray.config import ConfigError, OptimizerSection
from plm_ray.hardware import Hardware

# DeepSpeed keys plm-ray sets from its own configuration, and the plm-ray key that decides each
OWNED = {
    "train_micro_batch_size_per_gpu": "the micro-batch (pretrain.batch_size / the trial's batch size)",
    "train_batch_size": "the micro-batch x accumulation x workers",
    "gradient_accumulation_steps": "pretrain.grad_accum",
    "gradient_clipping": "pretrain.grad_clip",
    "zero_optimization.stage": "pretrain.zero_stage / sweep.zero_stage",
    "bf16.enabled": "pretrain.precision / sweep.precision",
    "fp16.enabled": "pretrain.precision / sweep.precision",
    "torch_autocast.enabled": "pretrain.precision / sweep.precision",
    "optimizer": "the optimizer section and the learning rates",
    "scheduler": "the learning-rate schedule keys",
}


@dataclass(frozen=True)
class EngineSpec:
    micro_batch: int
    grad_accum: int
    zero_stage: int
    offload: bool  # ZeRO optimizer-state offload to CPU
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    total_steps: int
    schedule: str  # linear | cosine
    grad_clip: float
    hidden_size: int  # sizes ZeRO's buffers
    optimizer: OptimizerSection
    compile: bool = False
    user: dict[str, Any] = field(default_factory=dict)  # the user's DeepSpeed JSON (read_user_config)

    @property
    def offloads(self) -> bool:
        return self.offload and self.zero_stage > 0


def _scheduler(spec: EngineSpec) -> dict[str, Any]:
    # DeepSpeed's schedulers refuse 0 warm-up steps; one step at lr 0 is what warm-up costs anyway
    warmup = max(1, min(spec.warmup_steps, spec.total_steps - 1))
    steps = {"total_num_steps": spec.total_steps, "warmup_num_steps": warmup}
    if spec.schedule == "cosine":
        return {"type": "WarmupCosineLR", "params": {**steps, "warmup_min_ratio": 0.0, "cos_min_ratio": 0.0}}
    shape = {"warmup_min_lr": 0.0, "warmup_max_lr": spec.learning_rate, "warmup_type": "linear"}
    return {"type": "WarmupDecayLR", "params": {**steps, **shape}}


def _zero(spec: EngineSpec, hardware: Hardware) -> dict[str, Any]:
    """Buckets sized to the model and the link (Hardware.reduce_bucket): DeepSpeed's defaults
    (5e8-element buckets) allocate buffers that dwarf a small model's own state."""
    bucket = hardware.reduce_bucket(spec.hidden_size, spec.zero_stage)
    zero: dict[str, Any] = {"stage": spec.zero_stage, "contiguous_gradients": True, "reduce_bucket_size": bucket}
    if hardware.use_gpu and spec.zero_stage in (1, 2):
        # NCCL buckets for the parameter all-gather too. No overlap_comm: DeepSpeed's overlapped path
        # synchronizes the whole device at every bucket, and over NVLink the exchange it would hide
        # is a small part of a step (BENCHMARKS.md, the multi-GPU model)
        zero["allgather_bucket_size"] = bucket
    if spec.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * bucket)
        zero["stage3_param_persistence_threshold"] = 10 * spec.hidden_size
    if spec.offloads:
        zero["offload_optimizer"] = {"device": "cpu"}
    return zero


def deepspeed_config(spec: EngineSpec, hardware: Hardware) -> dict[str, Any]:
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": spec.micro_batch,
        "gradient_accumulation_steps": spec.grad_accum,
        "gradient_clipping": spec.grad_clip,
        "scheduler": _scheduler(spec),
        "zero_optimization": _zero(spec, hardware),
        "bf16": {"enabled": hardware.precision == "bf16"},
        "fp16": {"enabled": hardware.precision == "fp16", "loss_scale": 0},
        "torch_autocast": {"enabled": hardware.precision == "bf16-mixed", "dtype": "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronizes the device at every forward and every step (two
        # stalls a micro-step, where the GPU sat idle while the host queued the next one); plm-ray
        # measures its own throughput from the host without waiting.
        "timers": {"throughput": {"enabled": False}},
    }
    if spec.offloads:  # DeepSpeed's CPU Adam; otherwise the engine passes torch's AdamW
        o = spec.optimizer
        params = {"lr": spec.learning_rate, "betas": o.betas, "eps": o.eps, "weight_decay": spec.weight_decay}
        config["optimizer"] = {"type": "AdamW", "params": params}
    return _merge(config, spec.user, "") if spec.user else config


def read_user_config(path: str, key: str) -> dict[str, Any]:
    """The user's DeepSpeed JSON, read and checked on the driver (workers get the dict, not the file)."""
    try:
        loaded = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise ConfigError(f"config key '{key}' = {path!r}: cannot read it ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConfigError(f"config key '{key}' = {path!r}: not JSON ({exc})") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config key '{key}' = {path!r}: must hold a JSON object")
    return loaded


def _all_auto(value: Any) -> bool:
    """ "auto", or a section all of whose values are (an HF-style optimizer block, say)."""
    return value == "auto" or (isinstance(value, dict) and all(_all_auto(v) for v in value.values()))


def _owner(path: str) -> str | None:
    return next((owner for owned, owner in OWNED.items() if path == owned or path.startswith(owned + ".")), None)


def _merge(ours: dict[str, Any], theirs: dict[str, Any], prefix: str) -> dict[str, Any]:
    merged = dict(ours)
    for k, value in theirs.items():
        path = f"{prefix}{k}"
        if isinstance(value, dict) and isinstance(ours.get(k), dict):
            merged[k] = _merge(ours[k], value, path + ".")
        elif _all_auto(value):
            continue  # plm-ray's value (or DeepSpeed's default where plm-ray sets none)
        elif _owner(path) and (isinstance(value, dict) or ours.get(k) != value):
            raise ConfigError(
                f"DeepSpeed key '{path}' = {json.dumps(value)} conflicts with {json.dumps(ours.get(k))}, which plm-ray "
                f'sets from {_owner(path)}; use "auto" there or change the plm-ray key'
            )
        else:
            merged[k] = value
    return merged
