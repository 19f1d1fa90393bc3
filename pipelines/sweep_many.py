"""Pre-train once, then sweep several tasks, from Python (plm_ray.api): the scripted-sweep pattern.

    python pipelines/sweep_many.py --config pipelines/configs/wiki_sst2.yaml --run many \\
        --task sst2=data/sst2/train.tsv --task mrpc=data/mrpc.tsv:sentence2

A task is NAME=PATH, or NAME=PATH:PAIR_COLUMN for sentence pairs (the first text in sweep.text_column).
Each task's sweep sits in the run beside the others (`<run>/<NAME>/`); with --model the sweeps
fine-tune that checkpoint instead of pre-training first. A table of each task's best trial is
printed at the end and written to `<run>/tasks.csv`.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, when not pip-installed

from plm_ray import api  # noqa: E402
from plm_ray.store import Store  # noqa: E402


def _task(text: str) -> tuple[str, dict[str, str]]:
    name, _, where = text.partition("=")
    path, _, pair = where.partition(":") if not where.startswith(("s3://", "gs://")) else (where, "", "")
    if not name or not path:
        raise SystemExit(f"--task {text!r}: expected NAME=PATH or NAME=PATH:PAIR_COLUMN")
    return name, {"sweep.name": name, "sweep.task": path, "sweep.text_pair_column": pair}


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the YAML every command starts from")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--run", required=True, help="the run every sweep goes into")
    parser.add_argument("--task", dest="tasks", action="append", required=True, metavar="NAME=PATH[:PAIR_COLUMN]")
    parser.add_argument("--model", default="", help="a checkpoint to fine-tune instead of pre-training first")
    args = parser.parse_args(argv)
    base = dict(s.split("=", 1) for s in args.sets) | {"run.name": args.run}
    tasks = dict(_task(t) for t in args.tasks)
    # every task's keys and values are checked before anything runs: a typo in the last one costs nothing
    model = {"sweep.model": args.model}
    configs = {name: api.load_config(args.config, base | model | keys) for name, keys in tasks.items()}
    if not args.model:
        api.pretrain(api.load_config(args.config, base), resume=True)  # a second call reuses the export
    rows = []
    for name, cfg in configs.items():
        best = api.sweep(cfg, overwrite=True).best
        scores = {"accuracy": best.accuracy, "macro_f1": best.macro_f1, "learning_rate": best.learning_rate}
        rows.append({"task": name, **scores, "model": best.checkpoint})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    cfg = next(iter(configs.values()))
    Store(cfg.store).write_bytes(table.getvalue().encode(), args.run, "tasks.csv")
    print(table.getvalue(), end="")
    return rows


if __name__ == "__main__":
    main()
