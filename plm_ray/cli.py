"""`plm-ray run | prepare | pretrain | sweep | config | report | store ls` (also `python -m plm_ray` and
`pipelines/*.py`).

The console shows plm-ray's own progress and the summary, last. Everything else (Ray's, Ray Data's,
Tune's, DeepSpeed's and the workers' output) goes to log files kept in the run, `<run>/logs/`;
`--verbose` shows it on the console too. Exit codes: 0 done, 2 refused input, 3 stalled (with
run.exit_on_stall), 1 any other failure.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import yaml

from plm_ray import __version__
from plm_ray.config import CACHE, Config, ConfigError, StoreSection, load_config

if TYPE_CHECKING:
    from plm_ray.store import Store

STAGE_COMMANDS = {
    "run": "prepare, pretrain, then sweep (the whole pipeline)",
    "prepare": "train the tokenizer and tokenize the corpus into the store's shard cache",
    "pretrain": "MLM pre-training with Ray Train + DeepSpeed (prepares the data first)",
    "sweep": "Ray Tune fine-tuning sweep",
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with one section per stage")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key (repeatable); the value is read as the key's type (lists as YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-ray", description="BERT pre-training and fine-tuning sweeps on Ray.")
    parser.add_argument("--version", action="version", version=f"plm-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in STAGE_COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        _add_config_args(command)
        command.add_argument("--resume", action="store_true", help="continue the named run where it stopped")
        command.add_argument("--overwrite", action="store_true", help="replace the named run (or sweep)")
        command.add_argument("--verbose", action="store_true", help="Ray's, Tune's and DeepSpeed's output too")
    config = sub.add_parser("config", help="print the resolved configuration (or every key's reference)")
    _add_config_args(config)
    config.add_argument("--reference", action="store_true", help="every key: type, default, meaning (markdown)")
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


def _logging(verbose: bool, log_file: Path) -> list[logging.Handler]:
    """Everything to `log_file`; on the console plm-ray's warnings and anyone's errors (all with
    --verbose). Returns the handlers added, for the command to remove when it ends."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        console.addFilter(lambda r: r.levelno >= (logging.WARNING if r.name.startswith("plm_ray") else logging.ERROR))
    for handler in (to_file, console):
        root.addHandler(handler)
    return [to_file, console]


def execute(command: str, cfg: Config, resume: bool = False, overwrite: bool = False, verbose: bool = False) -> dict:
    """The command's stages (pipeline.py); its start-up counts from this process's start, as Python,
    the imports and Ray's start are part of what a user waits for."""
    # torch and transformers (seconds on one core) load in a thread while the checks run and a local
    # Ray starts, which mostly waits for its own processes, so they overlap instead of adding up. Not
    # when joining a running cluster: under `ray job submit` the thread's torch import collided with
    # the main thread's (a partially initialized torch).
    from plm_ray import cluster

    if cluster.starts_local_cluster():
        threading.Thread(target=_import_torch_and_transformers, daemon=True).start()
    from plm_ray import pipeline

    began = psutil.Process().create_time()
    summary = pipeline.execute(command, cfg, resume, overwrite, began=began, verbose=verbose)
    print(pipeline.format_summary(summary), flush=True)
    return summary


def _import_torch_and_transformers() -> None:
    import torch  # noqa: F401
    from transformers import PreTrainedTokenizerFast  # noqa: F401


def _keep_logs(cfg: Config, log_file: Path) -> str:
    """The driver's log and the workers' (on a cluster this machine started) into `<run>/logs/`."""
    from plm_ray.cluster import worker_logs
    from plm_ray.store import Store

    store = Store(cfg.store)
    if not cfg.run.name or not store.exists(cfg.run.name):
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(log_file, Path(tmp) / "driver.log")
        folder = worker_logs()
        for log in sorted(folder.glob("worker-*")) if folder else []:
            if log.stat().st_size:
                shutil.copy(log, Path(tmp) / log.name)
        return store.upload_dir(tmp, cfg.run.name, "logs")


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
    runs = [name for name in store.list_dir() if name != CACHE]  # the store's caches are no run
    if not runs:
        print(f"no runs in {store.uri()}")
    for run in runs:
        stages = [s for s in store.list_dir(run) if store.exists(run, s, "result.json")]
        state = "complete" if store.exists(run, "summary.json") else "incomplete"
        print(f"{run}\t{state}\t{','.join(stages) or '-'}\t{store.uri(run)}")


def _config(args: argparse.Namespace) -> None:
    if args.reference:
        from plm_ray.config.reference import reference

        print(reference(), end="")
        return
    print(yaml.safe_dump(load_config(args.config, args.sets).to_dict(), sort_keys=False), end="")


def _stage_command(args: argparse.Namespace) -> int:
    from plm_ray import monitor

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    cfg = load_config(args.config, args.sets)
    if args.resume and not cfg.run.name:
        raise ConfigError("--resume needs the run's name: --set run.name=NAME")
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "driver.log"
        handlers = _logging(args.verbose, log_file)
        keep = functools.partial(_keep_logs, cfg, log_file)  # also when a stall ends the process
        monitor.LAST_WORDS.append(keep)
        done = False
        try:
            execute(args.command, cfg, args.resume, args.overwrite, args.verbose)
            done = True
        except monitor.Stalled as exc:
            print(f"plm-ray: stalled: {exc}", file=sys.stderr)
            return 3
        finally:
            monitor.LAST_WORDS.remove(keep)
            for handler in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
            logs = keep()
            if logs and not done:  # the summary names them when the command completes
                print(f"logs: {logs}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "store":
            store_ls(args.root, args.endpoint, args.region)
        elif args.command == "report":
            report(args.run, args.root, args.endpoint, args.region)
        elif args.command == "config":
            _config(args)
        else:
            return _stage_command(args)
    except ConfigError as exc:
        print(f"plm-ray: error: {exc}", file=sys.stderr)
        return 2
    return 0
