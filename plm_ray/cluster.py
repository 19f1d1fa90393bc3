"""Ray for a command: join the cluster it runs on or start a local one, and the start-up marks that
each run's result.json splits its start-up by. Light on purpose: the CLI starts Ray through this
module while the pipeline's heavy imports (torch, transformers, Ray Train) load beside it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import ray
import ray.data

from plm_ray.ports import free_port


class StartupClock:
    """When the command running in this process began and reached each start-up mark, which its
    result.json splits its start-up by. The first command starts with the process (Python, the
    imports and Ray's start are its start-up; `imported` is when this module was, the CLI's first
    plm_ray import after the config). A later command in the same process (a script or a test
    calling the pipeline again) starts at its `begin`, with nothing left to import or start."""

    def __init__(self) -> None:
        self.began = psutil.Process().create_time()
        self.marks: dict[str, float] = {"imported": time.time()}
        self.commands = 0

    def begin(self) -> None:
        self.commands += 1
        if self.commands > 1:
            self.began = time.time()
            self.marks = {"imported": self.began}
            if ray.is_initialized():
                self.marks["ray_ready"] = self.began

    def mark(self, name: str) -> None:
        """The first time this command got to `name`."""
        self.marks.setdefault(name, time.time())


STARTUP = StartupClock()


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (set by `ray job submit`; `auto` finds one started with
    `ray start`), else start a local one whose dashboard and job server listen on 127.0.0.1 only.
    Not guessing avoids hanging on a stale address that a stopped `ray start` leaves behind."""
    if starts_local_cluster():
        port = free_port(preferred=8265)
        with _environment(_local_cluster_env(port)):
            ray.init(
                address="local",
                logging_level="WARNING",
                num_cpus=num_cpus,
                dashboard_host="127.0.0.1",
                dashboard_port=port,
            )
    elif not ray.is_initialized():
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
    STARTUP.mark("ray_ready")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Tokenize + pack in corpus order: a restarted run must cut the very same blocks.
    context.execution_options.preserve_order = True


def starts_local_cluster() -> bool:
    return not ray.is_initialized() and os.environ.get("RAY_ADDRESS", "local") in ("", "local")


def _local_cluster_env(port: int) -> dict[str, str]:
    """The environment a local cluster's processes start with. Environment, not a job runtime_env: a
    runtime_env keeps Ray from handing the workers it prestarts to the job (every actor then waited
    for a new process: ~1.5 s more start-up, BENCHMARKS.md)."""
    env = {
        # Ray Train's placement-group cleaner asks the State API whether a run's controller is alive.
        # Unpinned, that API goes to the cluster of this machine's last `ray start`, finds no such
        # controller there, and quits or removes the run's workers.
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
        # Ray Train's preemption watcher follows node drains (spot reclaims, autoscaler); a cluster a
        # command starts on its own machine has none, and the watcher's process took CPU from the
        # first steps.
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    }
    # pyarrow's jemalloc pool keeps freed pages: each Ray Data worker's memory then grew with the
    # corpus (16 shards 1.25x one; system allocator 1.14x, BENCHMARKS.md)
    env["ARROW_DEFAULT_MEMORY_POOL"] = os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")
    return env


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """`env` while the cluster's processes start (they keep it), this process's own afterwards, so a
    `ray start` or job this process launches later does not inherit another cluster's settings."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
