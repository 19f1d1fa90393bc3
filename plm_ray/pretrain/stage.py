"""Stage 6, pre-training, the driver side: check the cluster can hold the workers, then launch Ray
Train's `TorchTrainer` over the packed blocks; each worker runs `loop.train_loop`."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from plm_ray.config import Config, ConfigError
from plm_ray.hardware import collective_backend
from plm_ray.store import Store


def _train_worker(loop_config: dict[str, Any]) -> None:
    """The worker's entry point. The driver and Ray Train's controller unpickle it by reference, so
    it imports the loop (DeepSpeed, the model classes: seconds of imports) only where it runs."""
    from plm_ray.pretrain.loop import train_loop

    train_loop(loop_config)


def check_resources(cfg: Config) -> None:
    """Refuse up front what would otherwise wait forever for resources that never come."""
    p = cfg.pretrain
    have = ray.cluster_resources()
    need_cpu = p.num_workers * p.cpus_per_worker
    if need_cpu > have.get("CPU", 0):
        raise ConfigError(
            f"pretrain.num_workers = {p.num_workers} x cpus_per_worker = {p.cpus_per_worker} needs "
            f"{need_cpu} CPUs, but the Ray cluster has {have.get('CPU', 0):g}"
        )
    if p.use_gpu and p.num_workers > have.get("GPU", 0):
        raise ConfigError(
            f"pretrain.num_workers = {p.num_workers} with use_gpu needs {p.num_workers} GPUs, "
            f"but the Ray cluster has {have.get('GPU', 0):g}"
        )


def total_steps(cfg: Config, n_blocks: int) -> int:
    p = cfg.pretrain
    batches_per_rank = n_blocks // p.num_workers // p.batch_size
    steps_per_epoch = batches_per_rank // p.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"corpus too small: {n_blocks} blocks of {cfg.data.block_size} tokens give no full step "
            f"for {p.num_workers} workers x batch {p.batch_size} x accumulation {p.grad_accum}"
        )
    return p.max_steps or steps_per_epoch * p.epochs


def run_pretraining(cfg: Config, store: Store, run: str, train_blocks: Any, eval_blocks: np.ndarray) -> dict[str, Any]:
    """Launch the TorchTrainer; returns the final metrics of rank 0."""
    p = cfg.pretrain
    steps = total_steps(cfg, train_blocks.count())
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_dict(), "run": run, "total_steps": steps, "eval_blocks": eval_blocks},
        scaling_config=ScalingConfig(
            num_workers=p.num_workers,
            use_gpu=p.use_gpu,
            resources_per_worker={"CPU": p.cpus_per_worker},
            placement_strategy=p.placement_strategy,
        ),
        torch_config=TorchConfig(backend=collective_backend(p.use_gpu), timeout_s=p.comm_timeout_s),
        run_config=RunConfig(
            name="pretrain",
            storage_path=store.path(run),
            storage_filesystem=store.fs,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=p.keep_checkpoints),
        ),
        datasets={"train": train_blocks},
        # the same blocks in the same order on each rank in every attempt: what makes resume exact
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if not result.metrics or result.checkpoint is None:
        raise RuntimeError("pre-training finished without reporting its final checkpoint")
    return {**result.metrics, "checkpoint": store.location_of(result.checkpoint.path)}
