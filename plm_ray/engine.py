"""The one training-step layer: a DeepSpeed engine around a module whose forward returns a dict with
`loss`. Pre-training (SparseMLM, many ranks) and every sweep trial (Classifier, one rank) use it, so
precision, ZeRO, optimizer, schedule, clipping, checkpointing and export are written once."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address
from transformers import PreTrainedModel

from plm_ray.ports import free_port

log = logging.getLogger(__name__)
# Smallest ZeRO-1/2 gradient bucket (elements) when the collectives go through gloo (CPU workers),
# where each collective has a fixed cost: with hidden² buckets (65,536 elements at 256 hidden) a step
# of the 4-layer benchmark BERT made 58 collectives, with 4 Mi elements 8, and at 2 ranks the step
# ran 2-14 % faster (BENCHMARKS.md, benchmark 3b).
GLOO_MIN_BUCKET = 4 * 2**20


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 / AMX): there bf16 runs ~2.5x the fp32 rate; elsewhere it is emulated."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, use_gpu: bool) -> str:
    """`auto`: bf16 where the GPU or CPU has it, fp16 on older GPUs, else fp32. An explicit choice wins,
    but what the hardware cannot do is refused rather than emulated slowly."""
    if requested == "auto":
        if use_gpu:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if not use_gpu and requested == "fp16":
        raise ValueError("precision fp16 needs a GPU; use bf16, fp32 or auto on CPU")
    if not use_gpu and requested == "bf16" and not cpu_has_bf16():
        raise ValueError("precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); use fp32 or auto")
    return requested


def uses_autocast(precision: str, use_gpu: bool) -> bool:
    """On CPU, bf16 means torch autocast over fp32 weights (DeepSpeed's `torch_autocast`): matmuls run
    in bf16, weights, gradients and optimizer state stay fp32. GPUs use DeepSpeed's bf16 mode (bf16
    weights and gradients, fp32 master copy in the optimizer)."""
    return precision == "bf16" and not use_gpu


def deepspeed_config(
    *,
    micro_batch: int,
    grad_accum: int,
    zero_stage: int,
    offload: bool,
    precision: str,
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str,
    grad_clip: float,
    hidden_size: int,
    use_gpu: bool,
) -> dict[str, Any]:
    autocast = uses_autocast(precision, use_gpu)
    # DeepSpeed's schedulers refuse 0 warm-up steps; one step at lr 0 is what warm-up costs anyway
    warmup = max(1, min(warmup_steps, total_steps - 1))
    scheduler = (
        {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_num_steps": warmup,
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": 0.0,
            },
        }
        if schedule == "cosine"
        else {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_num_steps": warmup,
                "warmup_min_lr": 0.0,
                "warmup_max_lr": learning_rate,
                "warmup_type": "linear",
            },
        }
    )
    # Buckets sized to the model, as the Hugging Face integration's "auto" does: DeepSpeed's defaults
    # (5e8-element reduce bucket) allocate 2 GB buffers that dwarf a small model's own state. Over
    # gloo, ZeRO-1/2 buckets are at least GLOO_MIN_BUCKET (16 MiB in fp32, one buffer per rank);
    # ZeRO-3 keeps hidden², its buffers are what it exists to shrink.
    bucket = hidden_size * hidden_size
    if not use_gpu and zero_stage in (1, 2):
        bucket = max(bucket, GLOO_MIN_BUCKET)
    zero: dict[str, Any] = {"stage": zero_stage, "contiguous_gradients": True, "reduce_bucket_size": bucket}
    if zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
    if offload and zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": learning_rate,
                "betas": [0.9, 0.98],
                "eps": 1e-6,
                "weight_decay": weight_decay,
                # torch's AdamW everywhere except offload, which needs DeepSpeed's CPU Adam
                "torch_adam": not (offload and zero_stage > 0),
            },
        },
        "scheduler": scheduler,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16" and not autocast},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0},
        "torch_autocast": {"enabled": autocast, "dtype": "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (standard BERT recipe)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ensure_process_group(use_gpu: bool) -> None:
    """Ray Train sets up torch.distributed for its workers; a Tune trial is a single process and
    gets a one-rank group here so the same DeepSpeed engine runs in both."""
    if dist.is_initialized():
        return
    # Always a fresh loopback port: a MASTER_PORT inherited from the shell or from the process that
    # started Ray is one port for every concurrent trial, and all but the first fail EADDRINUSE.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", auto_mpi_discovery=False, verbose=False)


# The only non-tensor types DeepSpeed's own checkpoints hold (ZeRO 0-3, fp32/bf16/fp16).
DEEPSPEED_CHECKPOINT_TYPES = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's loader with `torch.load(weights_only=True)`: a checkpoint can hold tensors,
    containers and the DeepSpeed types above, nothing that runs code when unpickled."""

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(DEEPSPEED_CHECKPOINT_TYPES):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"refusing to unpickle {path}: {str(exc).splitlines()[0]}") from exc


class Engine:
    """A DeepSpeed engine plus the few operations the training loops need."""

    def __init__(self, module: torch.nn.Module, config: dict[str, Any], weight_decay: float, compile: bool = False):
        self.zero_stage = config["zero_optimization"]["stage"]
        self.autocast = config["torch_autocast"]["enabled"]
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=param_groups(module, weight_decay), config=config
        )
        self.engine.checkpoint_engine = SafeCheckpointEngine(self.engine._config)
        if compile:
            self.engine.compile()

    def autocast_context(self) -> torch.autocast:
        """The autocast the engine's forward runs under, for running other modules the same way."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def global_steps(self) -> int:
        """Optimizer steps taken (micro-steps / gradient accumulation)."""
        return self.engine.global_steps

    @property
    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def train_step(
        self, batch: dict[str, torch.Tensor], schedule_position: int | None = None
    ) -> dict[str, torch.Tensor]:
        """One micro-step. `schedule_position` sets where DeepSpeed's LR schedule stands after it (a
        time budget moves it by time); None lets DeepSpeed count optimizer steps."""
        self.engine.train()
        out = self.engine(**batch)
        self.engine.backward(out["loss"])
        self.engine.step(lr_kwargs=None if schedule_position is None else {"last_batch_iteration": schedule_position})
        return out

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.engine.eval()
        return self.engine(**batch)

    def save(self, directory: str | Path, client_state: dict[str, Any]) -> None:
        """This rank's shard (and, on rank 0, the module states) into `directory/state/`. The loop's own
        state travels under one key: DeepSpeed hands back its own metadata beside it on load."""
        self.engine.save_checkpoint(str(directory), tag="state", client_state={"plm_ray": client_state})

    def load(self, directory: str | Path) -> dict[str, Any]:
        path, client_state = self.engine.load_checkpoint(str(directory), tag="state")
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {directory}")
        return client_state["plm_ray"]

    def export(self, model: PreTrainedModel, out_dir: str | Path, write: bool) -> None:
        """Consolidated Hugging Face export (safetensors). Under ZeRO-3 every rank must enter the
        gather; without it each rank holds only its shard and the export would be empty."""
        with deepspeed.zero.GatheredParameters(
            list(model.parameters()), modifier_rank=None, enabled=self.zero_stage == 3
        ):
            if write:
                model.save_pretrained(str(out_dir), safe_serialization=True)
        if dist.is_initialized():
            dist.barrier()
