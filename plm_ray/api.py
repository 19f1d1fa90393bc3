"""plm-ray from Python: the CLI's commands as functions that return the summary as an object.

    from plm_ray import api

    cfg = api.load_config("pipelines/configs/wiki_sst2.yaml", {"run.name": "mine", "sweep.search": "random"})
    summary = api.run(cfg)                      # prepare, pretrain, then sweep
    print(summary.best.accuracy, summary.best.checkpoint)

    for task in ("mrpc", "rte"):               # one sweep per task, beside each other in the run
        cfg = api.load_config(None, {"run.name": "mine", "sweep.name": task, "sweep.task": f"data/{task}.tsv"})
        print(task, api.sweep(cfg).best.accuracy)

Ray is started once and kept for the next call; a bad input raises `ConfigError` (before anything
starts), a stalled command with run.exit_on_stall `Stalled`. `pipelines/sweep_many.py` is an example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from plm_ray.config import Config, ConfigError
from plm_ray.config import load_config as _load_config
from plm_ray.monitor import Stalled

__all__ = ["Best", "Config", "ConfigError", "Stalled", "Summary", "load_config", "prepare", "pretrain", "run", "sweep"]


@dataclass(frozen=True)
class Best:
    """A sweep's best trial: its hyperparameters, scores and the model (a Hugging Face checkpoint)."""

    learning_rate: float
    batch_size: int
    warmup_ratio: float
    weight_decay: float
    epochs: int
    accuracy: float
    macro_f1: float
    loss: float
    checkpoint: str


@dataclass(frozen=True)
class Summary:
    """What a command left in the store (`<run>/summary.json`, as objects)."""

    run: str
    store: str
    report: str
    pretrain: dict[str, Any] | None  # pretrain/result.json: steps, tokens, losses, export, ...
    sweep: dict[str, Any] | None  # the sweep's results: every trial, and the best
    best: Best | None

    @property
    def export(self) -> str | None:
        """The pre-trained model (a Hugging Face checkpoint), if the run pre-trained."""
        return self.pretrain["export"] if self.pretrain else None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """A checked configuration: the defaults, then the YAML file, then `overrides` ({"section.key": value})."""
    sets = [f"{key}={json.dumps(v) if isinstance(v, list) else v}" for key, v in (overrides or {}).items()]
    return _load_config(path, sets)


def _summary(raw: dict[str, Any]) -> Summary:
    sweep = raw.get("sweep")
    best = None
    if sweep:
        names = {f.name for f in fields(Best)}
        best = Best(**{k: v for k, v in sweep["best"].items() if k in names})
    return Summary(raw["run"], raw["store"], raw["report"], raw.get("pretrain"), sweep, best)


def _execute(command: str, cfg: Config, resume: bool, overwrite: bool, verbose: bool) -> dict[str, Any]:
    from plm_ray import pipeline

    return pipeline.execute(command, cfg, resume=resume, overwrite=overwrite, verbose=verbose)


def run(cfg: Config, resume: bool = False, overwrite: bool = False, verbose: bool = False) -> Summary:
    """Prepare, pre-train, then sweep."""
    return _summary(_execute("run", cfg, resume, overwrite, verbose))


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False, verbose: bool = False) -> Summary:
    """Prepare the data, then pre-train."""
    return _summary(_execute("pretrain", cfg, resume, overwrite, verbose))


def sweep(cfg: Config, resume: bool = False, overwrite: bool = False, verbose: bool = False) -> Summary:
    """The fine-tuning sweep (of this run's export, or `sweep.model`)."""
    return _summary(_execute("sweep", cfg, resume, overwrite, verbose))


def prepare(cfg: Config, verbose: bool = False) -> str:
    """Train the tokenizer and tokenize the corpus into the store's cache; the cache's location."""
    return _execute("prepare", cfg, False, False, verbose)["prepare"]
