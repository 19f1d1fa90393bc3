"""Stage 6, pre-training: Ray Train `TorchTrainer` workers, each driving a DeepSpeed ZeRO engine on
packed blocks streamed from Ray Data. The per-worker loop reads top to bottom:
restore -> for each micro-batch: seed, mask, step -> log / evaluate / checkpoint -> export.

A resumed run repeats an uninterrupted one exactly: each rank's slice of the data comes in a fixed
order (Ray Data `preserve_order`), the masks and dropout of micro-batch k are drawn from a seed that
depends only on (run seed, rank, k), and optimizer and LR-schedule state come from the checkpoint."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.data import ExecutionOptions
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from plm_ray import checkpoints
from plm_ray.budget import Budget
from plm_ray.config import Config, ConfigError, from_dict, resolve_zero_stage
from plm_ray.data.masking import MaskingTables, mask_tokens
from plm_ray.store import Store, fetch_dir

if TYPE_CHECKING:
    from plm_ray.engine import Engine

# Ray Train tees print() in workers to stdout and its log (shown twice); log once instead.
log = logging.getLogger(__name__)
# |loss difference| allowed between the live engine and its reloaded export on one batch: fp32 and
# CPU autocast (fp32 weights) reload the very weights; GPU bf16/fp16 weights are upcast on export.
EXPORT_TOLERANCE = {"fp32": 1e-4, "autocast": 1e-3, "bf16": 5e-2, "fp16": 5e-2}


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Evaluator:
    """Held-out MLM loss, perplexity and masked-token accuracy on a fixed set of blocks. Masks are
    drawn from a fixed seed so successive evaluations are comparable; every rank runs the same
    number of batches (required under ZeRO-3, where forward passes gather across ranks)."""

    def __init__(
        self,
        blocks: np.ndarray,
        rank: int,
        world: int,
        batch: int,
        tables: MaskingTables,
        cfg: Config,
        device: torch.device,
    ):
        usable = len(blocks) - len(blocks) % world
        mine = torch.from_numpy(blocks[:usable][rank::world]).long().to(device)
        generator = torch.Generator(device=device).manual_seed(12345 + rank)
        self.batches = [mask_tokens(chunk, tables, cfg.masking, generator) for chunk in mine.split(batch)]

    def __call__(self, engine: Engine) -> dict[str, float]:
        totals = torch.zeros(3, dtype=torch.float64, device=engine.device)
        for batch in self.batches:
            out = engine.forward(batch)
            totals += torch.stack([out["loss"].double() * out["count"], out["correct"].double(), out["count"].double()])
        dist.all_reduce(totals)
        loss = (totals[0] / totals[2]).item()
        return {
            "eval_loss": loss,
            "eval_perplexity": math.exp(min(loss, 50.0)),
            "eval_accuracy": (totals[1] / totals[2]).item(),
        }


def _agree(value: Any) -> Any:
    """Rank 0's value, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def micro_step_seed(run_seed: int, rank: int, micro_step: int) -> int:
    return int(np.random.SeedSequence([run_seed, rank, micro_step]).generate_state(1)[0])


def restore(engine: Engine, store: Store, run: str, workdir: Path) -> dict[str, Any] | None:
    """Load the newest complete checkpoint (rank 0 picks it, every rank loads it): after a worker
    failure Ray Train restarts the workers here, and so does a new command with the same run name."""
    name = _agree(checkpoints.latest_complete(store, run) if dist.get_rank() == 0 else None)
    if name is None:
        return None
    local = store.download_dir(workdir / name, run, checkpoints.STAGE, name)
    state = engine.load(local)
    shutil.rmtree(local, ignore_errors=True)
    state["resumed_from"] = name
    return state


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    loop_start_unix = time.time()
    # Worker-only imports: the driver and Ray Train's controller unpickle this function by reference,
    # and importing DeepSpeed and the model classes there cost seconds of start-up for nothing.
    from plm_ray.data.tokenizer import load_tokenizer
    from plm_ray.engine import Engine, deepspeed_config, resolve_precision
    from plm_ray.model import SparseMLM, attention_implementation, build_mlm

    # DeepSpeed's ZeRO collectives call a torch API deprecated in 2.13; once per step is noise.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    cfg = from_dict(loop_config["config"])
    run, total_steps = loop_config["run"], loop_config["total_steps"]
    p = cfg.pretrain
    store = Store(cfg.store)
    if not p.use_gpu:  # one intra-op thread per reserved CPU, whatever the worker's environment says
        torch.set_num_threads(p.cpus_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    workdir = Path(tempfile.mkdtemp(prefix=f"plm-pretrain-{rank}-"))

    tokenizer = load_tokenizer(store.download_dir(workdir / "tokenizer", run, "tokenizer"))
    init_dir = fetch_dir(cfg.model.init_from, store, workdir / "init") if cfg.model.init_from else None
    torch.manual_seed(cfg.run.seed)  # the same initial weights in every attempt (DeepSpeed broadcasts rank 0's)
    attention = attention_implementation(cfg.model.attention, p.use_gpu)
    model = build_mlm(cfg.model, len(tokenizer), cfg.data.block_size, tokenizer.pad_token_id, init_dir, attention)
    precision = resolve_precision(p.precision, p.use_gpu)
    zero_stage = resolve_zero_stage(p.zero_stage, world, p.offload)
    engine = Engine(
        SparseMLM(model),
        deepspeed_config(
            micro_batch=p.batch_size,
            grad_accum=p.grad_accum,
            zero_stage=zero_stage,
            offload=p.offload,
            precision=precision,
            learning_rate=p.learning_rate,
            weight_decay=p.weight_decay,
            warmup_steps=p.warmup_steps,
            total_steps=total_steps,
            schedule=p.schedule,
            grad_clip=p.grad_clip,
            hidden_size=model.config.hidden_size,
            use_gpu=p.use_gpu,
        ),
        p.weight_decay,
        compile=p.compile,
    )

    fresh = {"step": 0, "micro_steps": 0, "epoch": 0, "batches_in_epoch": 0, "tokens": 0, "history": []}
    state = restore(engine, store, run, workdir) or fresh
    attempt = _agree(time.strftime("%Y%m%d-%H%M%S"))  # names this attempt's checkpoints
    if "resumed_from" in state:
        state["history"].append({"step": state["step"], "resumed_from": state.pop("resumed_from")})
        if rank == 0:
            log.info(
                f"[pretrain] resumed at step {state['step']} (epoch {state['epoch']}, "
                f"batch {state['batches_in_epoch']}) from {state['history'][-1]['resumed_from']}, "
                f"lr {engine.learning_rate:.3e}",
            )
    elif rank == 0:
        n_params = sum(getattr(t, "ds_numel", t.numel()) for t in model.parameters())  # ZeRO-3 shards params
        log.info(
            f"[pretrain] {world} worker(s), ZeRO-{zero_stage}, {precision}"
            f"{' (autocast)' if engine.autocast else ''}, {n_params / 1e6:.1f}M parameters, {total_steps} steps"
            f"{f' or {p.budget_minutes:g} min, whichever ends first' if p.budget_minutes else ''}",
        )

    engine_ready_unix = time.time()
    device = engine.device
    tables = MaskingTables.from_tokenizer(tokenizer).to(device)
    evaluate = Evaluator(loop_config["eval_blocks"], rank, world, p.batch_size, tables, cfg, device)
    writer = _tensorboard(workdir) if rank == 0 else None

    def save_and_report(metrics: dict[str, Any]) -> None:
        """Every rank writes its own ZeRO shard and manifest and reports them; Ray merges them into one
        checkpoint directory. All ranks must call report, or the others wait forever."""
        name = checkpoints.checkpoint_name(state["step"], attempt)
        ckpt_dir = workdir / name
        state["train_seconds"] = budget.spent()
        engine.save(ckpt_dir, state)
        if rank == 0:
            tokenizer.save_pretrained(str(ckpt_dir / "tokenizer"))
            marker = {"step": state["step"], "run": run, "config": loop_config["config"]}
            (ckpt_dir / checkpoints.STATE).write_text(json.dumps(marker))
            store.write_json(state["history"], run, "pretrain", "history.json")
            if writer:
                writer.flush()
                store.upload_dir(workdir / "tensorboard", run, "pretrain", "tensorboard")
        checkpoints.write_manifest(ckpt_dir, rank, world, state["step"])
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(ckpt_dir)), checkpoint_dir_name=name)
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    def record(metrics: dict[str, Any], message: str) -> None:
        state["history"].append(metrics)
        if rank == 0:
            log.info("[pretrain] %s", message)
            _log_scalars(writer, metrics["step"], metrics)

    shard = ray.train.get_dataset_shard("train")
    loss_sum, micro_steps, started, start_step = torch.zeros((), device=device), 0, time.time(), state["step"]
    last: dict[str, float] = {}
    first_step_unix = 0.0  # wall clock of this attempt's first optimizer step: start-up cost
    budget = Budget(p.budget_minutes, total_steps, state.get("train_seconds", 0.0), device)
    finished = budget.exhausted(state["step"])
    while not finished:
        batches = shard.iter_torch_batches(
            batch_size=p.batch_size,
            drop_last=True,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer_blocks or None,
            local_shuffle_seed=cfg.run.seed + state["epoch"],
        )
        for index, batch in enumerate(batches):
            if index < state["batches_in_epoch"]:
                continue  # resuming mid-epoch: skip what the checkpoint already consumed
            torch.manual_seed(micro_step_seed(cfg.run.seed, rank, state["micro_steps"]))  # masks and dropout
            input_ids = batch["input_ids"].to(device, dtype=torch.long, non_blocking=True)
            out = engine.train_step(
                mask_tokens(input_ids, tables, cfg.masking), budget.schedule_position(engine.global_steps)
            )
            loss_sum += out["loss"].detach()
            micro_steps += 1
            state["micro_steps"] += 1
            state["batches_in_epoch"] += 1
            state["tokens"] += input_ids.numel() * world
            if engine.global_steps == state["step"]:
                continue  # inside a gradient-accumulation window
            state["step"] = step = engine.global_steps
            finished = budget.exhausted(step)
            first_step_unix = first_step_unix or time.time()
            if step % p.log_every_steps == 0 or finished:
                elapsed = time.time() - started
                last = {
                    "step": step,
                    "loss": (loss_sum / micro_steps).item(),
                    "lr": engine.learning_rate,
                    "tokens": state["tokens"],
                    "elapsed_seconds": elapsed,
                }
                loss_sum.zero_()
                micro_steps = 0
                rate = (step - start_step) / elapsed
                tokens_per_second = rate * p.batch_size * p.grad_accum * cfg.data.block_size * world
                last["tokens_per_second"] = tokens_per_second
                record(
                    last,
                    f"step {step}/{total_steps} loss {last['loss']:.4f} lr {last['lr']:.2e} "
                    f"tok/s {tokens_per_second:,.0f} ETA {_fmt_eta(budget.seconds_left(step, rate))}",
                )
            if p.eval_every_steps and step % p.eval_every_steps == 0 and not finished:
                m = {"step": step, **evaluate(engine)}
                record(
                    m,
                    f"step {step} eval loss {m['eval_loss']:.4f} ppl {m['eval_perplexity']:.2f} "
                    f"acc {m['eval_accuracy']:.3f}",
                )
            if p.checkpoint_every_steps and step % p.checkpoint_every_steps == 0 and not finished:
                save_and_report({"step": step, **last})
            if finished:
                break
        else:
            state["epoch"] += 1
            state["batches_in_epoch"] = 0

    final = {
        **last,
        "step": state["step"],
        **evaluate(engine),
        "wall_seconds": time.time() - started,
        "train_seconds": budget.spent(),
        "stopped_by": "max_steps" if state["step"] >= total_steps else "budget_minutes",
        "loop_start_unix": loop_start_unix,
        "engine_ready_unix": engine_ready_unix,
        "first_step_unix": first_step_unix,
        "nodes": _node_count(world),
        "precision": precision,
        "zero_stage": zero_stage,
        "attention": attention,
    }
    state["history"].append({"step": state["step"], **{k: v for k, v in final.items() if k.startswith("eval_")}})
    tolerance = EXPORT_TOLERANCE["autocast" if engine.autocast else precision]
    final["export_max_abs_diff"] = _export(engine, model, tokenizer, evaluate, workdir / "export", rank, tolerance)
    if rank == 0:
        store.upload_dir(workdir / "export", run, "pretrain", "export")
        _log_scalars(writer, state["step"], final)
        log.info(
            f"[pretrain] done: eval loss {final['eval_loss']:.4f}, export {store.uri(run, 'pretrain', 'export')}",
        )
    save_and_report(final)
    shutil.rmtree(workdir, ignore_errors=True)


def _export(
    engine: Engine,
    model: torch.nn.Module,
    tokenizer: Any,
    evaluate: Evaluator,
    out_dir: Path,
    rank: int,
    tolerance: float,
) -> float:
    """Write the consolidated HF model and tokenizer, then reload it with plain transformers and
    check it reproduces the live engine's loss on one held-out batch."""
    batch = evaluate.batches[0]
    live = engine.forward(batch)["loss"].item()
    engine.export(model, out_dir, write=rank == 0)
    if rank != 0:
        return 0.0
    tokenizer.save_pretrained(str(out_dir))
    from transformers import AutoModelForMaskedLM

    from plm_ray.model import SparseMLM

    attention = model.config._attn_implementation  # the same kernels as the live model
    reloaded = AutoModelForMaskedLM.from_pretrained(str(out_dir), attn_implementation=attention)
    reloaded = SparseMLM(reloaded.to(engine.device)).eval()
    with torch.no_grad(), engine.autocast_context():
        diff = abs(reloaded(**batch)["loss"].item() - live)
    if diff > tolerance:
        raise RuntimeError(f"exported model disagrees with the live engine: |loss diff| = {diff:.2e}")
    return diff


def _node_count(world: int) -> int:
    """Distinct Ray nodes the workers ran on (node IDs, not IPs: nodes may share an address)."""
    ids: list[str | None] = [None] * world
    dist.all_gather_object(ids, ray.get_runtime_context().get_node_id())
    return len(set(ids))


def _tensorboard(workdir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))


def _log_scalars(writer: Any, step: int, metrics: dict[str, Any]) -> None:
    if writer is not None:
        for key, value in metrics.items():
            if isinstance(value, float):
                writer.add_scalar(f"pretrain/{key}", value, step)


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
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "run": run, "total_steps": steps, "eval_blocks": eval_blocks},
        scaling_config=ScalingConfig(
            num_workers=p.num_workers,
            use_gpu=p.use_gpu,
            resources_per_worker={"CPU": p.cpus_per_worker},
            placement_strategy=p.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo", timeout_s=p.comm_timeout_s),
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
