"""Pre-training, the driver side: check that a resume trains the same thing and that the
cluster can hold the workers, then launch Ray Train's `TorchTrainer`; each worker runs
`loop.train_loop` and reads its blocks from the tokenized cache the prepare stage made."""

from __future__ import annotations

from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from plm_ray import hardware as hw
from plm_ray.config import Config, ConfigError
from plm_ray.config.checks import model_shape
from plm_ray.context import Context
from plm_ray.engine.deepspeed_config import deepspeed_config, read_user_config
from plm_ray.hardware import collective_backend
from plm_ray.pretrain import checkpoints
from plm_ray.pretrain.spec import engine_spec


def _train_worker(loop_config: dict[str, Any]) -> None:
    """The worker's entry point. The driver and Ray Train's controller unpickle it by reference, so
    it imports the loop (DeepSpeed, the model classes: seconds of imports) only where it runs."""
    from plm_ray.pretrain.loop import train_loop

    train_loop(loop_config)


class PretrainStage:
    name = "pretrain"

    def folder(self, ctx: Context) -> str:
        return "pretrain"

    def done(self, ctx: Context) -> bool:
        return ctx.store.exists(ctx.run, "pretrain", "result.json")

    def check(self, ctx: Context) -> dict[str, Any]:
        """`model.init_from`'s positions, the user's DeepSpeed JSON (read here, so workers need no
        access to it; conflicts refused), and the checkpoint a resume continues from (refused if it
        was made with another configuration)."""
        cfg, store, run = ctx.cfg, ctx.store, ctx.run
        if cfg.model.init_from and "://" not in cfg.model.init_from:
            from plm_ray.model.build import check_positions

            check_positions(cfg.model.init_from, cfg.data.block_size)
        user = read_user_config(cfg.pretrain.deepspeed, "pretrain.deepspeed") if cfg.pretrain.deepspeed else {}
        if user:
            _, hidden, _, _ = model_shape(cfg)
            spec = engine_spec(cfg, cfg.pretrain.num_workers, max(cfg.pretrain.max_steps, 1), hidden, user)
            deepspeed_config(spec, hw.expected(cfg.pretrain.use_gpu, cfg.pretrain.precision))
        latest = None if ctx.overwrite else checkpoints.latest_complete(store, run)
        if latest:
            saved = checkpoints.read_state(store, run, latest)
            checkpoints.check_compatible(saved["config"], cfg.to_dict(), store.uri(run, "pretrain", latest))
            print(f"[plm-ray] pretrain of {run} continues from {latest} (step {saved['step']})", flush=True)
        return {"deepspeed": user}

    def check_cluster(self, ctx: Context, checked: Any) -> None:
        """Refuse up front what would otherwise wait forever for resources that never come."""
        p = ctx.cfg.pretrain
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

    def run(self, ctx: Context, checked: dict[str, Any]) -> dict[str, Any]:
        prepared = ctx.outputs["prepare"]
        metrics = _fit(ctx, total_steps(ctx), prepared.key, prepared.eval_blocks, checked["deepspeed"])
        return {
            "steps": metrics["step"],
            "tokens": metrics["tokens"],
            "tokens_per_second": metrics["tokens_per_second"],
            "wall_seconds": metrics["wall_seconds"],
            "train_seconds": metrics["train_seconds"],  # all attempts' training time: what a budget limits
            "stopped_by": metrics["stopped_by"],
            "startup_seconds": metrics["first_step_unix"] - ctx.began,
            "final_loss": metrics["loss"],
            "eval_loss": metrics["eval_loss"],
            "eval_perplexity": metrics["eval_perplexity"],
            "eval_accuracy": metrics["eval_accuracy"],
            "export_max_abs_diff": metrics["export_max_abs_diff"],
            "nodes": metrics["nodes"],
            "precision": metrics["precision"],
            "zero_stage": metrics["zero_stage"],
            "attention": metrics["attention"],
            "cache": prepared.cache,
            "checkpoint": metrics["checkpoint"],
            "export": ctx.store.uri(ctx.run, "pretrain", "export"),
            "tokenizer": ctx.store.uri(ctx.run, "tokenizer"),
        }


def total_steps(ctx: Context) -> int:
    """`max_steps`, or the steps of `epochs` epochs (which needs the whole cache: waits for its build)."""
    p = ctx.cfg.pretrain
    prepared = ctx.outputs["prepare"]
    if p.max_steps and prepared.builder:
        return p.max_steps  # still streaming: an epoch's length is not known yet
    n_blocks = prepared.train_blocks(ctx)
    steps_per_epoch = n_blocks // (p.num_workers * p.batch_size * p.grad_accum)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"corpus too small: {n_blocks} blocks of {ctx.cfg.data.block_size} tokens give no full step "
            f"for {p.num_workers} workers x batch {p.batch_size} x accumulation {p.grad_accum}"
        )
    return p.max_steps or steps_per_epoch * p.epochs


def _fit(ctx: Context, steps: int, cache_key: str, eval_blocks: Any, deepspeed: dict[str, Any]) -> dict[str, Any]:
    """Launch the TorchTrainer; returns the final metrics of rank 0."""
    cfg: Config = ctx.cfg
    p, store = cfg.pretrain, ctx.store
    loop_config = {
        "config": cfg.to_dict(),
        "run": ctx.run,
        "total_steps": steps,
        "cache_key": cache_key,
        "eval_blocks": eval_blocks,
        "deepspeed": deepspeed,
        "progress": ctx.progress,
    }
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=p.num_workers,
            use_gpu=p.use_gpu,
            resources_per_worker={"CPU": p.cpus_per_worker},
            placement_strategy=p.placement_strategy,
        ),
        torch_config=TorchConfig(backend=collective_backend(p.use_gpu), timeout_s=p.comm_timeout_s),
        run_config=RunConfig(
            name="pretrain",
            storage_path=store.path(ctx.run),
            storage_filesystem=store.fs,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=p.keep_checkpoints),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if not result.metrics or result.checkpoint is None:
        raise RuntimeError("pre-training finished without reporting its final checkpoint")
    return {**result.metrics, "checkpoint": store.location_of(result.checkpoint.path)}
