"""`plm-ray run | pretrain | sweep | report | store ls` (also `python -m plm_ray` and `pipelines/*.py`)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psutil

from plm_ray.config import Config, ConfigError, StoreSection, load_config

if TYPE_CHECKING:
    from plm_ray.store import Store

COMMANDS = {"run": ["pretrain", "sweep"], "pretrain": ["pretrain"], "sweep": ["sweep"]}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with one section per stage")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key (repeatable); the value is read as YAML",
    )
    parser.add_argument("--resume", action="store_true", help="continue the named run from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the named run first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-ray", description="BERT pre-training and fine-tuning sweeps on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "pretrain then sweep (the whole pipeline)"),
        ("pretrain", "MLM pre-training with Ray Train + DeepSpeed"),
        ("sweep", "Ray Tune fine-tuning sweep"),
    ):
        _add_config_args(sub.add_parser(name, help=help_text))
    report = sub.add_parser("report", help="write a run's report: trial tables and accuracy / loss plots")
    report.add_argument("run", help="run name")
    _add_store_args(report, "--root")
    store = sub.add_parser("store", help="inspect the checkpoint store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    ls = store_sub.add_parser("ls", help="list runs and their completed stages")
    _add_store_args(ls, "root")
    return parser


def _add_store_args(parser: argparse.ArgumentParser, root: str) -> None:
    kwargs = {"nargs": "?"} if not root.startswith("-") else {}
    parser.add_argument(root, default=StoreSection.root, help="store root (path or URI)", **kwargs)
    parser.add_argument("--endpoint", default="", help="S3-compatible endpoint override")
    parser.add_argument("--region", default="")


def execute(command: str, cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    from plm_ray import cluster

    # torch and transformers (~2 s on one core) load in a thread while a local Ray cluster starts,
    # which mostly waits for its own processes, so the two overlap instead of adding up. Not when
    # joining a running cluster: that takes no time to hide, and under `ray job submit` the thread's
    # torch import collided with the main thread's (a partially initialized torch).
    importer = None
    if cluster.starts_local_cluster():
        importer = threading.Thread(target=_import_torch_and_transformers, daemon=True)
        importer.start()
    cluster.ensure_ray()
    if importer:
        importer.join()
    from plm_ray import pipeline

    store, run = pipeline.start_run(cfg, COMMANDS[command], resume, overwrite)
    if "pretrain" in COMMANDS[command]:
        # start-up counts from the process's start: Python, the imports and Ray's start are part of it
        pipeline.pretrain(cfg, store, run, began=psutil.Process().create_time())
    if "sweep" in COMMANDS[command]:
        pipeline.sweep(cfg, store, run)
    summary = pipeline.finish(cfg, store, run)
    print(pipeline.format_summary(summary), flush=True)
    return summary


def _import_torch_and_transformers() -> None:
    import torch  # noqa: F401
    from transformers import PreTrainedTokenizerFast  # noqa: F401


def _store(root: str, endpoint: str, region: str) -> Store:
    from plm_ray.store import Store

    store = Store(StoreSection(root=root, endpoint=endpoint, region=region))
    store.check_access()
    return store


def report(run: str, root: str, endpoint: str, region: str) -> None:
    from plm_ray.report import write_report

    store = _store(root, endpoint, region)
    if not store.exists(run):
        raise ConfigError(f"no run {run!r} in {store.uri()}")
    location = write_report(store, run)
    print(store.fs.open_input_stream(store.path(run, "report", "report.md")).read().decode())
    print(f"[plm-ray] report: {location}")


def store_ls(root: str, endpoint: str, region: str) -> None:
    store = _store(root, endpoint, region)
    runs = store.list_dir()
    if not runs:
        print(f"no runs in {store.uri()}")
    for run in runs:
        stages = [s for s in store.list_dir(run) if store.exists(run, s, "result.json")]
        state = "complete" if store.exists(run, "summary.json") else "incomplete"
        print(f"{run}\t{state}\t{','.join(stages) or '-'}\t{store.uri(run)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "store":
            store_ls(args.root, args.endpoint, args.region)
            return 0
        if args.command == "report":
            report(args.run, args.root, args.endpoint, args.region)
            return 0
        if args.resume and args.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        cfg = load_config(args.config, args.sets)
        if args.resume and not cfg.run.name:
            raise ConfigError("--resume needs the run's name: --set run.name=NAME")
        execute(args.command, cfg, args.resume, args.overwrite)
    except ConfigError as exc:
        print(f"plm-ray: error: {exc}", file=sys.stderr)
        return 2
    return 0
