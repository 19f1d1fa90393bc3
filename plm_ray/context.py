"""What a stage sees of the command it runs in, and what a stage is.

A stage (data/stage.py: prepare; pretrain/stage.py; sweep/stage.py) is one place with:
- `check(ctx)`: read and validate its inputs once and return them; before Ray starts, nothing written;
- `check_cluster(ctx, checked)`: what the cluster must hold (resources), once Ray is up, nothing written;
- `run(ctx, checked)`: the work, from what `check` returned; its result is the stage's result.json.
The pipeline (pipeline.py) is the list of stages a command runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from plm_ray.config import Config
from plm_ray.store import Store


@dataclass
class Context:
    cfg: Config
    store: Store
    run: str  # the run's folder in the store; "" for a command outside any run (prepare)
    began: float  # when the command began (unix time): its start-up is counted from here
    stages: tuple[str, ...] = ()  # the stages the command runs, in order
    resume: bool = False
    overwrite: bool = False
    verbose: bool = False  # Ray's, DeepSpeed's and Tune's own output on the console too
    progress: Any = None  # the monitor's Progress actor: workers and trials report to it
    outputs: dict[str, Any] = field(default_factory=dict)  # what earlier stages of the command handed on


class Stage(Protocol):
    name: str  # how commands and the summary name it

    def folder(self, ctx: Context) -> str: ...  # where its result.json goes in the run ("" for none)

    def done(self, ctx: Context) -> bool: ...

    def check(self, ctx: Context) -> Any: ...

    def check_cluster(self, ctx: Context, checked: Any) -> None: ...

    def run(self, ctx: Context, checked: Any) -> dict[str, Any]: ...
