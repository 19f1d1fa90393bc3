"""The pipeline: run names and stage markers, the embedded inputs, pretrain -> sweep -> summary.

Each stage writes `<run>/<stage>/result.json` last, so its presence means the stage completed;
`summary.json` is written after the stages a command ran, so a reader never sees a half-run.
Every input is checked before anything of a run is deleted or written (`preflight`), so a typo in
a command never costs the run it names. A stage that did not complete continues where it stopped
when the same run is started again: pre-training from its newest complete checkpoint, a sweep
through `Tuner.restore`."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml

from plm_ray.cluster import ensure_ray
from plm_ray.config import Config, ConfigError
from plm_ray.data import embedded
from plm_ray.data.corpus import read_corpus
from plm_ray.data.labeled import prepare_labeled, read_labeled
from plm_ray.data.packing import packed_blocks
from plm_ray.data.tokenizer import load_tokenizer, prepare_tokenizer
from plm_ray.pretrain import checkpoints
from plm_ray.pretrain.stage import check_resources, run_pretraining
from plm_ray.store import Store

# The model classes, Ray Tune and matplotlib are imported by the stage that uses them: a command's
# first optimizer step waited ~2 s for them (BENCHMARKS.md, start-up).

EMBEDDED = {"corpus": "corpus", "train": "train.tsv", "dev": "dev.tsv"}


def start_run(cfg: Config, stages: list[str], resume: bool, overwrite: bool) -> tuple[Store, str]:
    """Pick the run name, refuse to silently overwrite a completed stage, check every input, and
    only then replace what --overwrite replaces: the whole run for pre-training, else the sweep."""
    store = Store(cfg.store)
    store.check_access()
    cfg.store.root = store.root_uri  # workers and trials run in other directories
    run = cfg.run.name or time.strftime("run-%Y%m%d-%H%M%S")
    cfg.run.name = run
    folders = [cfg.sweep.name if s == "sweep" else s for s in stages]
    done = [f for f in folders if store.exists(run, f, "result.json")]
    if done and not (resume or overwrite):
        raise ConfigError(
            f"run {run!r} already completed {', '.join(done)} in {store.uri(run)}; "
            "pass --resume to continue it or --overwrite to replace it"
        )
    preflight(cfg, store, run, stages, overwrite)
    if overwrite:
        store.delete(run) if "pretrain" in stages else store.delete(run, cfg.sweep.name)
    store.write_bytes(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode(), run, "config.yaml")
    print(f"[plm-ray] run {run} in {store.uri(run)}", flush=True)
    return store, run


def preflight(cfg: Config, store: Store, run: str, stages: list[str], overwrite: bool) -> None:
    """Every check that needs no training, for each stage that will run, before anything is deleted
    or written."""
    ensure_ray()
    if "pretrain" in stages and (overwrite or not store.exists(run, "pretrain", "result.json")):
        check_resources(cfg)
        if cfg.model.init_from and "://" not in cfg.model.init_from:
            from plm_ray.model.build import check_positions

            check_positions(cfg.model.init_from, cfg.data.block_size)
        if cfg.data.corpus != "embedded":
            read_corpus(cfg.data, store)
        latest = None if overwrite else checkpoints.latest_complete(store, run)
        if latest:
            saved = checkpoints.read_state(store, run, latest)
            checkpoints.check_compatible(saved["config"], cfg.to_dict(), store.uri(run, "pretrain", latest))
            print(f"[plm-ray] pretrain of {run} continues from {latest} (step {saved['step']})", flush=True)
    if "sweep" in stages and (overwrite or not store.exists(run, cfg.sweep.name, "result.json")):
        from plm_ray.sweep.stage import check_trial_resources

        check_trial_resources(cfg)
        if cfg.sweep.model not in ("", "random"):
            _checkpoint_location(cfg.sweep.model, store)
        if cfg.sweep.task != "embedded":
            read_labeled(cfg.sweep, store, cfg.sweep.task, cfg.sweep.validation)


def embedded_inputs(store: Store, run: str, seed: int) -> dict[str, str]:
    """Write the embedded corpus and task into the run (once), so workers on any node read them
    through the store like any other input."""
    for name, text in embedded.files(seed).items():
        if not store.exists(run, "data", "embedded", name):
            store.write_bytes(text.encode(), run, "data", "embedded", name)
    return {key: store.uri(run, "data", "embedded", name) for key, name in EMBEDDED.items()}


def run_tokenizer(cfg: Config, store: Store, run: str, corpus: ray.data.Dataset | None) -> Any:
    """The run's tokenizer: reused from the store when present (resume), else loaded or trained."""
    with tempfile.TemporaryDirectory() as tmp:
        if store.exists(run, "tokenizer"):
            return load_tokenizer(store.download_dir(tmp, run, "tokenizer"))
        tokenizer = prepare_tokenizer(cfg.tokenizer, corpus, Path(tmp))
        store.upload_dir(tmp, run, "tokenizer")
        return tokenizer


def pretrain(cfg: Config, store: Store, run: str, began: float | None = None) -> dict[str, Any]:
    """Tokenize, pack and pre-train; `began` is when the command began (default: now), which its
    start-up (seconds to the first optimizer step) is counted from."""
    if store.exists(run, "pretrain", "result.json"):
        print(f"[plm-ray] pretrain already complete for {run}; reusing it", flush=True)
        return store.read_json(run, "pretrain", "result.json")
    ensure_ray()
    began = began or time.time()
    d = cfg.data
    location = embedded_inputs(store, run, cfg.run.seed)["corpus"] if d.corpus == "embedded" else d.corpus
    corpus = read_corpus(d, store, location)
    tokenizer = run_tokenizer(cfg, store, run, corpus)
    blocks = {
        split: packed_blocks(
            corpus,
            tokenizer.backend_tokenizer.to_str(),
            tokenizer.sep_token_id,
            tokenizer.cls_token_id,
            split,
            d.eval_fraction,
            d.block_size,
            d.tokenize_batch_docs,
        )
        for split in ("train", "eval")
    }
    eval_rows = blocks["eval"].limit(d.eval_blocks).take_all()
    if len(eval_rows) < cfg.pretrain.num_workers:
        raise ConfigError(
            f"held-out split of {location} has {len(eval_rows)} block(s), fewer than "
            f"{cfg.pretrain.num_workers} workers; raise data.eval_fraction"
        )
    started = time.time()
    train = blocks["train"].materialize()  # tokenize once, with every CPU, before workers take theirs
    print(
        f"[plm-ray] tokenized and packed {train.count():,} blocks of {d.block_size} tokens "
        f"in {time.time() - started:.1f}s",
        flush=True,
    )
    metrics = run_pretraining(cfg, store, run, train, np.stack([r["input_ids"] for r in eval_rows]))
    result = {
        "steps": metrics["step"],
        "tokens": metrics["tokens"],
        "tokens_per_second": metrics["tokens_per_second"],
        "wall_seconds": metrics["wall_seconds"],
        "train_seconds": metrics["train_seconds"],  # all attempts' training time: what a budget limits
        "stopped_by": metrics["stopped_by"],
        "startup_seconds": metrics["first_step_unix"] - began,
        "final_loss": metrics["loss"],
        "eval_loss": metrics["eval_loss"],
        "eval_perplexity": metrics["eval_perplexity"],
        "eval_accuracy": metrics["eval_accuracy"],
        "export_max_abs_diff": metrics["export_max_abs_diff"],
        "nodes": metrics["nodes"],
        "precision": metrics["precision"],
        "zero_stage": metrics["zero_stage"],
        "attention": metrics["attention"],
        "checkpoint": metrics["checkpoint"],
        "export": store.uri(run, "pretrain", "export"),
        "tokenizer": store.uri(run, "tokenizer"),
    }
    store.write_json(result, run, "pretrain", "result.json")
    return result


def _checkpoint_location(location: str, store: Store, hint: str = "") -> str:
    """A checkpoint to fine-tune, checked: a Hugging Face hub name passes through (resolved online
    by from_pretrained), a path or URI must hold a config.json."""
    if "://" not in location and not location.startswith(("/", ".", "~")) and not Path(location).exists():
        return location
    if not store.exists_at(location):
        raise ConfigError(f"checkpoint path not found: {location}{hint}")
    if not store.exists_at(f"{location.rstrip('/')}/config.json"):
        raise ConfigError(f"not a plm-ray/Hugging Face checkpoint (no config.json): {location}")
    return location if "://" in location else str(Path(location).expanduser().resolve())


def _model_to_finetune(cfg: Config, store: Store, run: str) -> tuple[str, str]:
    """(checkpoint to fine-tune or "" for random init, directory holding the random-init shape)."""
    s = cfg.sweep
    if s.model == "random":
        from plm_ray.model.build import build_config

        tokenizer = run_tokenizer(cfg, store, run, None)
        shape = build_config(cfg.model, len(tokenizer), cfg.data.block_size, tokenizer.pad_token_id)
        with tempfile.TemporaryDirectory() as tmp:
            shape.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            return "", store.upload_dir(tmp, run, s.name, "random_init")
    if s.model:
        return _checkpoint_location(s.model, store), ""
    export = store.uri(run, "pretrain", "export")
    return _checkpoint_location(export, store, "; run pretrain first or set sweep.model"), ""


def sweep(cfg: Config, store: Store, run: str) -> dict[str, Any]:
    s = cfg.sweep
    if store.exists(run, s.name, "result.json"):
        print(f"[plm-ray] sweep {s.name} already complete for {run}; reusing it", flush=True)
        return store.read_json(run, s.name, "result.json")
    ensure_ray()
    model, random_like = _model_to_finetune(cfg, store, run)
    if s.task == "embedded":
        inputs = embedded_inputs(store, run, cfg.run.seed)
        task, validation = inputs["train"], s.validation or inputs["dev"]
    else:
        task, validation = s.task, s.validation
    labels = prepare_labeled(s, store, run, task, validation)
    print(
        f"[plm-ray] sweep {s.name}: {labels['train_rows']:,} train / {labels['validation_rows']:,} validation rows, "
        f"{labels['num_labels']} classes, model {model or 'random init'}",
        flush=True,
    )
    started = time.time()
    from plm_ray.sweep.stage import run_sweep

    result = run_sweep(cfg, store, run, model, random_like, labels)
    result.update(model=model or "random", labels=labels, wall_seconds=time.time() - started)
    store.write_json(result, run, s.name, "result.json")
    return result


def finish(cfg: Config, store: Store, run: str) -> dict[str, Any]:
    """The end of every command: `summary.json` of the stages completed so far, and the run's report."""
    from plm_ray.report import write_report

    summary: dict[str, Any] = {"run": run, "store": store.uri(run), "config": store.uri(run, "config.yaml")}
    if store.exists(run, "pretrain", "result.json"):
        summary["pretrain"] = store.read_json(run, "pretrain", "result.json")
    if store.exists(run, cfg.sweep.name, "result.json"):
        summary["sweep"] = store.read_json(run, cfg.sweep.name, "result.json")
    summary["report"] = write_report(store, run)
    store.write_json(summary, run, "summary.json")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"run {summary['run']}  ({summary['store']})"]
    if "pretrain" in summary:
        p = summary["pretrain"]
        lines.append(
            f"pretrain: {p['steps']} steps (stopped by {p.get('stopped_by', 'max_steps')}), {p['tokens']:,} tokens, "
            f"{p['tokens_per_second']:,.0f} tok/s, "
            f"final loss {p['final_loss']:.3f}, eval loss {p['eval_loss']:.3f}, "
            f"start-up {p.get('startup_seconds', float('nan')):.0f}s, export {p['export']}"
        )
    if "sweep" in summary:
        s = summary["sweep"]
        lines.append(f"{'learning_rate':>14} {'batch':>6} {'epochs':>6} {'accuracy':>9} {'macro_f1':>9}")
        for t in s["trials"]:
            mark = " *" if t.get("checkpoint") == s["best"]["trial_checkpoint"] else ""
            lines.append(
                f"{t['learning_rate']:>14.2e} {t['batch_size']:>6} {t.get('epochs_run', 0):>6g} "
                f"{t.get('accuracy', float('nan')):>9.4f} {t.get('macro_f1', float('nan')):>9.4f}{mark}"
            )
        b = s["best"]
        lines.append(f"best: learning_rate {b['learning_rate']:.2e}, accuracy {b['accuracy']:.4f} -> {b['checkpoint']}")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)
