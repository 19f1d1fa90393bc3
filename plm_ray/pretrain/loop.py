"""The pre-training worker loop, one per Ray Train worker, each driving a DeepSpeed ZeRO engine:
set up -> restore -> for each micro-batch: step -> log / evaluate / checkpoint -> finish (export).

A resumed run repeats an uninterrupted one exactly: each rank's blocks come in a fixed order, the
masks and dropout of micro-batch k are drawn from a seed of (run seed, rank, k) only, and optimizer,
LR schedule and loop position come from the checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from plm_ray import hardware as hw
from plm_ray.config import Config, from_dict
from plm_ray.data.masking import MaskingTables, mask_tokens, masked_capacity
from plm_ray.data.stream import BlockSource, epoch_batches, prefetch
from plm_ray.data.tokenizer import load_tokenizer
from plm_ray.engine.engine import Engine
from plm_ray.model.build import build_mlm, max_sequence
from plm_ray.model.heads import SparseMLM
from plm_ray.modelcard import pretrain_card
from plm_ray.monitor import Reporter
from plm_ray.pretrain import checkpoints
from plm_ray.pretrain.budget import Budget
from plm_ray.pretrain.metrics import Evaluator, Meter
from plm_ray.pretrain.spec import engine_spec
from plm_ray.store import Store, fetch_dir
from plm_ray.tracking import Trackers

log = logging.getLogger(__name__)
PREFETCH_BATCHES = 8  # micro-batches read ahead of the step
# |loss difference| allowed between the live engine and its reloaded export on one batch: fp32 and
# bf16-mixed (fp32 weights) reload the very weights; bf16 and fp16 weights are upcast on export.
EXPORT_TOLERANCE = {"fp32": 1e-4, "bf16-mixed": 1e-3, "bf16": 5e-2, "fp16": 5e-2}


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint, so a restart continues from it."""

    step: int = 0  # optimizer steps taken
    micro_steps: int = 0  # micro-batches taken: seeds the next one's masks and dropout
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this rank consumed in the current epoch
    tokens: int = 0  # over all ranks
    train_seconds: float = 0.0  # training time of every attempt up to the checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Worker:
    """What a worker sets up once."""

    cfg: Config
    run: str
    total_steps: int
    rank: int
    world: int
    store: Store
    workdir: Path
    tokenizer: Any
    model: Any
    engine: Engine
    tables: MaskingTables
    capacity: int | None  # fixed masking slots per micro-batch (GPUs) or None (exact)
    source: BlockSource  # the tokenized cache's train blocks
    evaluate: Evaluator
    budget: Budget
    attempt: str  # names this attempt's checkpoints
    trackers: Trackers  # TensorBoard, MLflow, W&B: rank 0 only
    reporter: Reporter  # progress lines to the console and heartbeats (monitor.py)


def _agree(value: Any) -> Any:
    """Rank 0's value, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def micro_step_seed(run_seed: int, rank: int, micro_step: int) -> int:
    return int(np.random.SeedSequence([run_seed, rank, micro_step]).generate_state(1)[0])


def set_up(loop_config: dict[str, Any]) -> Worker:
    # DeepSpeed's ZeRO collectives call a torch API deprecated in 2.13; once per step is noise.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    cfg = from_dict(loop_config["config"])
    run, total_steps = loop_config["run"], loop_config["total_steps"]
    hardware = hw.pretraining(cfg)
    hardware.apply()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    reporter = Reporter(loop_config["progress"] if rank == 0 else None)
    reporter.beat("setting up the workers (imports, model, DeepSpeed)")
    store = Store(cfg.store)
    workdir = Path(tempfile.mkdtemp(prefix=f"plm-pretrain-{rank}-"))
    tokenizer = load_tokenizer(store.download_dir(workdir / "tokenizer", run, "tokenizer"))
    init_dir = fetch_dir(cfg.model.init_from, store, workdir / "init") if cfg.model.init_from else None
    torch.manual_seed(cfg.run.seed)  # the same initial weights in every attempt (DeepSpeed broadcasts rank 0's)
    model = build_mlm(
        cfg.model, len(tokenizer), cfg.data.block_size, tokenizer.pad_token_id, init_dir, hardware.attention
    )
    tokenizer.model_max_length = max_sequence(model.config)  # what `truncation=True` cuts to, in every export
    spec = engine_spec(cfg, world, total_steps, model.config.hidden_size, loop_config["deepspeed"])
    engine = Engine(SparseMLM(model), spec, hardware)
    tables = MaskingTables.from_tokenizer(tokenizer).to(engine.device)
    micro_tokens = cfg.pretrain.batch_size * cfg.data.block_size
    return Worker(
        cfg=cfg,
        run=run,
        total_steps=total_steps,
        rank=rank,
        world=world,
        store=store,
        workdir=workdir,
        tokenizer=tokenizer,
        model=model,
        engine=engine,
        tables=tables,
        capacity=masked_capacity(micro_tokens, cfg.masking) if hardware.fixed_shapes else None,
        source=BlockSource(store, loop_config["cache_key"], "train", waiting=reporter.beat),
        evaluate=Evaluator(loop_config["eval_blocks"], rank, world, cfg.pretrain.batch_size, tables, cfg),
        budget=Budget(cfg.pretrain.budget_minutes, total_steps, engine.device),
        attempt=_agree(time.strftime("%Y%m%d-%H%M%S")),
        trackers=Trackers(cfg, run, workdir, rank),
        reporter=reporter,
    )


def restore(w: Worker) -> LoopState:
    """The newest complete checkpoint's state (rank 0 picks it, every rank loads it), or a fresh one:
    after a worker failure Ray Train restarts the workers here, and so does a new command with the
    same run name."""
    name = _agree(checkpoints.latest_complete(w.store, w.run) if w.rank == 0 else None)
    if name is None:
        _announce(w)
        return LoopState()
    local = w.store.download_dir(w.workdir / name, w.run, checkpoints.STAGE, name)
    state = LoopState(**w.engine.load(local))
    shutil.rmtree(local, ignore_errors=True)
    state.history.append({"step": state.step, "resumed_from": name})
    if w.rank == 0:
        w.reporter.say(
            f"[pretrain] resumed at step {state.step} (epoch {state.epoch}, batch {state.batches_in_epoch}) "
            f"from {name}, lr {w.engine.learning_rate:.3e}"
        )
    return state


def _announce(w: Worker) -> None:
    if w.rank != 0:
        return
    p, e = w.cfg.pretrain, w.engine
    n_params = sum(getattr(t, "ds_numel", t.numel()) for t in w.model.parameters())  # ZeRO-3 shards params
    limit = f" or {p.budget_minutes:g} min, whichever ends first" if p.budget_minutes else ""
    w.reporter.say(
        f"[pretrain] {w.world} worker(s), ZeRO-{e.zero_stage}, {e.precision}, "
        f"{n_params / 1e6:.1f}M parameters, {w.total_steps} steps{limit}"
    )


def batches(w: Worker, state: LoopState) -> Iterator[torch.Tensor]:
    """This rank's micro-batches from the tokenized cache, epoch after epoch, from where the state
    stands; read ahead in a thread, pinned for the copy to a GPU."""
    d, p = w.cfg.data, w.cfg.pretrain
    pin = w.engine.device.type == "cuda"
    while True:
        stream = epoch_batches(
            w.source,
            w.rank,
            w.world,
            p.batch_size,
            state.epoch,
            state.batches_in_epoch,
            d.shuffle_buffer_blocks,
            w.cfg.run.seed,
        )
        tensors = (torch.from_numpy(b).pin_memory() if pin else torch.from_numpy(b) for b in stream)
        taken = 0
        for batch in prefetch(tensors, PREFETCH_BATCHES):
            taken += 1
            yield batch.to(w.engine.device, non_blocking=True)
        if taken == 0 and state.batches_in_epoch == 0:
            n_blocks = w.source.available()
            raise ValueError(
                f"corpus too small: {n_blocks} blocks of {d.block_size} tokens give no full step "
                f"for {w.world} workers x batch {p.batch_size}"
            )
        state.epoch += 1
        state.batches_in_epoch = 0


def step(w: Worker, state: LoopState, input_ids: torch.Tensor, meter: Meter) -> bool:
    """One micro-step; True when it completed an optimizer step."""
    torch.manual_seed(micro_step_seed(w.cfg.run.seed, w.rank, state.micro_steps))  # masks and dropout
    batch = mask_tokens(input_ids, w.tables, w.cfg.masking, capacity=w.capacity)
    out = w.engine.train_step(batch, w.budget.schedule_position(w.engine.global_steps))
    meter.add(out["loss"])
    state.micro_steps += 1
    state.batches_in_epoch += 1
    state.tokens += input_ids.numel() * w.world
    if w.engine.global_steps == state.step:
        return False  # inside a gradient-accumulation window
    state.step = w.engine.global_steps
    meter.first_step_unix = meter.first_step_unix or time.time()
    w.reporter.beat(f"training (step {state.step})")
    return True


def log_progress(w: Worker, state: LoopState, meter: Meter) -> dict[str, float]:
    elapsed = time.time() - meter.started
    rate = (state.step - meter.start_step) / elapsed  # optimizer steps per second
    p = w.cfg.pretrain
    tokens_per_second = rate * p.batch_size * p.grad_accum * w.cfg.data.block_size * w.world
    metrics = {
        "step": state.step,
        "loss": meter.take_loss(),
        "lr": w.engine.learning_rate,
        "tokens": state.tokens,
        "elapsed_seconds": elapsed,
        "tokens_per_second": tokens_per_second,
    }
    eta = _fmt_eta(w.budget.seconds_left(state.step, rate))
    _record(
        w,
        state,
        metrics,
        f"step {state.step}/{w.total_steps} loss {metrics['loss']:.4f} "
        f"lr {metrics['lr']:.2e} tok/s {tokens_per_second:,.0f} ETA {eta}",
    )
    return metrics


def evaluate(w: Worker, state: LoopState) -> dict[str, float]:
    metrics = {"step": state.step, **w.evaluate(w.engine)}
    _record(
        w,
        state,
        metrics,
        f"step {state.step} eval loss {metrics['eval_loss']:.4f} "
        f"ppl {metrics['eval_perplexity']:.2f} acc {metrics['eval_accuracy']:.3f}",
    )
    return metrics


def checkpoint(w: Worker, state: LoopState, metrics: dict[str, Any]) -> None:
    """Every rank writes its own ZeRO shard and manifest and reports them; Ray merges them into one
    checkpoint directory. All ranks must call report, or the others wait forever."""
    name = checkpoints.checkpoint_name(state.step, w.attempt)
    directory = w.workdir / name
    state.train_seconds = w.budget.spent()
    w.engine.save(directory, asdict(state))
    if w.rank == 0:
        w.tokenizer.save_pretrained(str(directory / "tokenizer"))
        marker = {"step": state.step, "run": w.run, "config": w.cfg.to_dict()}
        (directory / checkpoints.STATE).write_text(json.dumps(marker))
        w.store.write_json(state.history, w.run, "pretrain", "history.json")
        if w.trackers.tensorboard is not None:
            w.trackers.flush()
            w.store.upload_dir(w.workdir / "tensorboard", w.run, "pretrain", "tensorboard")
    checkpoints.write_manifest(directory, w.rank, w.world, state.step)
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(directory)), checkpoint_dir_name=name)
    shutil.rmtree(directory, ignore_errors=True)


def finish(w: Worker, state: LoopState, last: dict[str, Any], meter: Meter) -> None:
    """Evaluate, export and check the export, then the final checkpoint with the run's figures."""
    evaluation = w.evaluate(w.engine)
    state.history.append({"step": state.step, **evaluation})
    final = {
        **last,
        "step": state.step,
        **evaluation,
        "wall_seconds": time.time() - meter.started,
        "train_seconds": w.budget.spent(),
        "stopped_by": "max_steps" if state.step >= w.total_steps else "budget_minutes",
        "first_step_unix": meter.first_step_unix,
        "nodes": _node_count(w.world),
        "precision": w.engine.precision,
        "zero_stage": w.engine.zero_stage,
        "attention": w.model.config._attn_implementation,
    }
    final["export_max_abs_diff"] = _export(w, EXPORT_TOLERANCE[w.engine.precision], {**final, "tokens": state.tokens})
    if w.rank == 0:
        w.store.upload_dir(w.workdir / "export", w.run, "pretrain", "export")
        w.trackers.log(state.step, evaluation)
        export = w.store.uri(w.run, "pretrain", "export")
        w.reporter.say(f"[pretrain] done: eval loss {final['eval_loss']:.4f}, export {export}")
    checkpoint(w, state, final)


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    w = set_up(loop_config)
    state = restore(w)
    p = w.cfg.pretrain
    w.budget.start(state.train_seconds)
    meter, last = Meter(w.engine.device, state.step), {}
    finished = w.budget.exhausted(state.step)
    for input_ids in batches(w, state) if not finished else ():
        if not step(w, state, input_ids, meter):
            continue
        finished = w.budget.exhausted(state.step)
        if state.step % p.log_every_steps == 0 or finished:
            last = log_progress(w, state, meter)
        if finished:
            break
        if p.eval_every_steps and state.step % p.eval_every_steps == 0:
            evaluate(w, state)
        if p.checkpoint_every_steps and state.step % p.checkpoint_every_steps == 0:
            checkpoint(w, state, {"step": state.step, **last})
    finish(w, state, last, meter)
    w.trackers.close()
    shutil.rmtree(w.workdir, ignore_errors=True)


def _record(w: Worker, state: LoopState, metrics: dict[str, Any], message: str) -> None:
    state.history.append(metrics)
    if w.rank == 0:
        w.reporter.say(f"[pretrain] {message}")
        w.trackers.log(metrics["step"], metrics)


def _export(w: Worker, tolerance: float, final: dict[str, Any]) -> float:
    """Write the consolidated HF model, its tokenizer and model card, then reload it with plain
    transformers and check it reproduces the live engine's loss on one held-out batch."""
    batch = w.evaluate.batches[0]
    out_dir = w.workdir / "export"
    live = w.engine.forward(batch)["loss"].item()
    w.engine.export(w.model, out_dir, write=w.rank == 0)
    if w.rank != 0:
        return 0.0
    w.tokenizer.save_pretrained(str(out_dir))
    where = w.store.uri(w.run, "pretrain", "export")
    card = pretrain_card(w.cfg, w.run, final, w.model, w.tokenizer.mask_token, where, w.tokenizer.model_max_length)
    (out_dir / "README.md").write_text(card)
    from transformers import AutoModelForMaskedLM

    attention = w.model.config._attn_implementation  # the same kernels as the live model
    reloaded = AutoModelForMaskedLM.from_pretrained(str(out_dir), attn_implementation=attention)
    reloaded = SparseMLM(reloaded.to(w.engine.device)).eval()
    with torch.no_grad(), w.engine.autocast_context():
        diff = abs(reloaded(**batch)["loss"].item() - live)
    if diff > tolerance:
        raise RuntimeError(f"exported model disagrees with the live engine: |loss diff| = {diff:.2e}")
    return diff


def _node_count(world: int) -> int:
    """Distinct Ray nodes the workers ran on (node IDs, not IPs: nodes may share an address)."""
    ids: list[str | None] = [None] * world
    dist.all_gather_object(ids, ray.get_runtime_context().get_node_id())
    return len(set(ids))


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"
