"""Ray for a command: join the cluster it runs on or start a local one. Light on purpose: the CLI
starts Ray through this module while the pipeline's heavy imports (torch, transformers) load beside it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray
import ray.data

from plm_ray.ports import free_port


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
