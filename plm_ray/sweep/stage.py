"""Sweep, the driver side: a Ray Tune search over fine-tuning hyperparameters (search.py).
Each trial (trial.py) reports accuracy and macro-F1 every epoch, or `evals_per_epoch` times an epoch
(ASHA stops weak trials; the best point of a trial is often inside an epoch), with a loadable
checkpoint each time; results.py collects the table and the best model."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from plm_ray import hardware as hw
from plm_ray import tracking
from plm_ray.config import ConfigError
from plm_ray.config.checks import model_shape
from plm_ray.context import Context
from plm_ray.data import embedded
from plm_ray.data.labeled import read_labeled, store_labeled
from plm_ray.engine.deepspeed_config import deepspeed_config, read_user_config
from plm_ray.store import Store
from plm_ray.sweep.search import check_searcher
from plm_ray.sweep.spec import engine_spec


@dataclass
class SweepInputs:
    model: str  # checkpoint to fine-tune ("" for a random init of the run's shape)
    labeled: dict[str, Any] | None  # the task's rows, read and checked (None: the embedded task)
    deepspeed: dict[str, Any]  # the user's DeepSpeed JSON, read and checked
    tokenizer: Any = None  # `tokenizer.path`'s, for a random init in a run that has no tokenizer of its own


def checkpoint_location(location: str, store: Store, hint: str = "") -> str:
    """A checkpoint to fine-tune, checked: a Hugging Face hub name passes through (resolved online
    by from_pretrained), a path or URI must hold a config.json."""
    if "://" not in location and not location.startswith(("/", ".", "~")) and not Path(location).exists():
        return location
    if not store.exists_at(location):
        raise ConfigError(f"checkpoint path not found: {location}{hint}")
    if not store.exists_at(f"{location.rstrip('/')}/config.json"):
        raise ConfigError(f"not a plm-ray/Hugging Face checkpoint (no config.json): {location}")
    return location if "://" in location else str(Path(location).expanduser().resolve())


class SweepStage:
    name = "sweep"

    def folder(self, ctx: Context) -> str:
        return ctx.cfg.sweep.name

    def done(self, ctx: Context) -> bool:
        return ctx.store.exists(ctx.run, ctx.cfg.sweep.name, "result.json")

    def check(self, ctx: Context) -> SweepInputs:
        """The labeled rows, the checkpoint to fine-tune and the user's DeepSpeed JSON, each read and
        checked once."""
        s, store = ctx.cfg.sweep, ctx.store
        labeled = None if s.task == "embedded" else read_labeled(s, store, s.task, s.validation)
        model = s.model
        if s.model not in ("", "random"):
            model = checkpoint_location(s.model, store)
        elif s.model == "" and "pretrain" not in ctx.stages:
            hint = "; run pretrain first or set sweep.model"
            model = checkpoint_location(store.uri(ctx.run, "pretrain", "export"), store, hint)
        tokenizer = None
        if s.model == "random" and "prepare" not in ctx.stages and not store.exists(ctx.run, "tokenizer"):
            if not ctx.cfg.tokenizer.path:
                raise ConfigError(
                    "config key 'sweep.model' = 'random': needs the run's tokenizer (run pretrain first) "
                    "or tokenizer.path"
                )
            from plm_ray.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(ctx.cfg.tokenizer.path)
        check_searcher(ctx.cfg)
        return SweepInputs("" if model == "random" else model, labeled, self._deepspeed(ctx), tokenizer)

    def _deepspeed(self, ctx: Context) -> dict[str, Any]:
        """The user's DeepSpeed JSON, checked against a trial's spec (the space's first values)."""
        s = ctx.cfg.sweep
        if not s.deepspeed:
            return {}
        user = read_user_config(s.deepspeed, "sweep.deepspeed")
        first = {
            "learning_rate": s.learning_rates[0],
            "batch_size": s.batch_sizes[0],
            "warmup_ratio": s.warmup_ratios[0],
        }
        hparams = {**first, "weight_decay": s.weight_decays[0], "epochs": s.epochs[0]}
        spec = engine_spec(ctx.cfg, hparams, 1000, model_shape(ctx.cfg)[1], user)
        deepspeed_config(spec, hw.expected(s.gpus_per_trial > 0, s.precision))
        return user

    def check_cluster(self, ctx: Context, checked: Any) -> None:
        """A trial larger than every node stays PENDING forever; refuse it up front."""
        s = ctx.cfg.sweep
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= s.cpus_per_trial and r.get("GPU", 0) >= s.gpus_per_trial for r in nodes):
            biggest = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
            raise ConfigError(
                f"sweep trial resources (cpus_per_trial = {s.cpus_per_trial}, gpus_per_trial = "
                f"{s.gpus_per_trial}) fit no node; the largest has {biggest[0]:g} CPUs, {biggest[1]:g} GPUs"
            )

    def run(self, ctx: Context, checked: SweepInputs) -> dict[str, Any]:
        from plm_ray.sweep.results import collect_results
        from plm_ray.sweep.search import TrialLines, tuner

        s, store, run = ctx.cfg.sweep, ctx.store, ctx.run
        model = checked.model or (store.uri(run, "pretrain", "export") if s.model == "" else "")
        random_like = "" if model else self._random_init_shape(ctx, checked.tokenizer)
        labels = store_labeled(checked.labeled or self._embedded_task(ctx), store, run, s.name)
        rows = f"{labels['train_rows']:,} train / {labels['validation_rows']:,} validation rows"
        print(
            f"[plm-ray] sweep {s.name}: {rows}, {labels['num_labels']} classes, model {model or 'random init'}",
            flush=True,
        )
        started = time.time()
        setup = {"config": ctx.cfg.to_dict(), "run": run, "model": model, "random_like": random_like}
        setup.update(id2label=labels["id2label"], deepspeed=checked.deepspeed)
        callbacks = [TrialLines(s.metric), *tracking.tune_callbacks(ctx.cfg, run)]
        grid = tuner(ctx.cfg, store, run, setup, callbacks, verbose=ctx.verbose).fit()
        result = collect_results(grid, ctx.cfg, store, run)
        result.update(model=model or "random", labels=labels, wall_seconds=time.time() - started)
        self._card(ctx, result)
        return result

    def _card(self, ctx: Context, result: dict[str, Any]) -> None:
        """The best model's README.md: the task, the sweep's table, the base it was fine-tuned from."""
        from plm_ray.modelcard import classifier_card

        store, run, s = ctx.store, ctx.run, ctx.cfg.sweep
        pretrain = (
            store.read_json(run, "pretrain", "result.json") if store.exists(run, "pretrain", "result.json") else None
        )
        positions = store.read_json(run, s.name, "best_model", "tokenizer_config.json")["model_max_length"]
        where = store.uri(run, s.name, "best_model")
        card = classifier_card(ctx.cfg, run, result, pretrain, where, positions)
        store.write_bytes(card.encode(), run, s.name, "best_model", "README.md")

    def _embedded_task(self, ctx: Context) -> dict[str, Any]:
        s = ctx.cfg.sweep
        where = embedded.locations(ctx.store, ctx.cfg.run.seed)
        return read_labeled(s, ctx.store, where["train"], s.validation or where["dev"])

    def _random_init_shape(self, ctx: Context, given: Any) -> str:
        """A random init needs the run's tokenizer (or `tokenizer.path`'s, `given`) and the model's
        shape: stored in the sweep's folder."""
        from plm_ray.data.tokenizer import load_tokenizer
        from plm_ray.model.build import build_config

        cfg, store, run = ctx.cfg, ctx.store, ctx.run
        with tempfile.TemporaryDirectory() as tmp:
            if store.exists(run, "tokenizer"):
                tokenizer = load_tokenizer(store.download_dir(Path(tmp) / "tokenizer", run, "tokenizer"))
            else:
                tokenizer = given  # the check loaded it
            shape = build_config(cfg.model, len(tokenizer), cfg.data.block_size, tokenizer.pad_token_id)
            shape.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            return store.upload_dir(tmp, run, cfg.sweep.name, "random_init")
