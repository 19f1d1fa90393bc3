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

from plm_ray.engine.deepspeed_config import EngineSpec, deepspeed_config
from plm_ray.engine.ops import ensure_cpu_ops
from plm_ray.hardware import Hardware
from plm_ray.ports import free_port

log = logging.getLogger(__name__)


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (standard BERT recipe)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ensure_process_group(hardware: Hardware) -> None:
    """Ray Train sets up torch.distributed for its workers; a Tune trial is a single process and
    gets a one-rank group here so the same DeepSpeed engine runs in both."""
    if dist.is_initialized():
        return
    # Always a fresh loopback port: a MASTER_PORT inherited from the shell or from the process that
    # started Ray is one port for every concurrent trial, and all but the first fail EADDRINUSE.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    if not hardware.use_gpu:
        ensure_cpu_ops()  # DeepSpeed's init_distributed builds its CPU op
    deepspeed.init_distributed(dist_backend=hardware.backend, auto_mpi_discovery=False, verbose=False)


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


def _adamw(groups: list[dict[str, Any]], spec: EngineSpec, hardware: Hardware) -> torch.optim.AdamW:
    """torch's AdamW, as DeepSpeed's `torch_adam` builds it, but one fused kernel for all parameters
    on GPUs instead of a loop of small ones (the CPU keeps torch's default implementation)."""
    o = spec.optimizer
    return torch.optim.AdamW(
        groups, lr=spec.learning_rate, betas=tuple(o.betas), eps=o.eps, fused=True if hardware.use_gpu else None
    )


class Engine:
    """A DeepSpeed engine plus the few operations the training loops need."""

    def __init__(self, module: torch.nn.Module, spec: EngineSpec, hardware: Hardware):
        config = deepspeed_config(spec, hardware)
        if not hardware.use_gpu:
            ensure_cpu_ops()  # before DeepSpeed builds its CPU op, where an interrupted build would hang it
        self.zero_stage = spec.zero_stage
        self.autocast = config["torch_autocast"]["enabled"]
        self.precision = hardware.precision
        groups = param_groups(module, spec.weight_decay)
        optimizer = None if spec.offloads else _adamw(groups, spec, hardware)
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=groups, optimizer=optimizer, config=config
        )
        self.engine.checkpoint_engine = SafeCheckpointEngine(self.engine._config)
        self.engine.train()
        self.training = True
        if spec.compile:
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
        self._mode(training=True)
        out = self.engine(**batch)
        self.engine.backward(out["loss"])
        self.engine.step(lr_kwargs=None if schedule_position is None else {"last_batch_iteration": schedule_position})
        return out

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._mode(training=False)
        return self.engine(**batch)

    def _mode(self, training: bool) -> None:
        """train() / eval() walk every module; only on a change, not at every micro-step."""
        if training != self.training:
            self.engine.train(training)
            self.training = training

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
