"""Ray for a command: join the cluster it runs on or start a local one. Light on purpose: the CLI
starts Ray through this module while the pipeline's heavy imports (torch, transformers) load beside it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
import ray.data

from plm_ray.ports import free_port


def ensure_ray(num_cpus: int | None = None, verbose: bool = True) -> None:
    """Join the cluster in RAY_ADDRESS (set by `ray job submit`; `auto` finds one started with
    `ray start`), else start a local one whose dashboard and job server listen on 127.0.0.1 only.
    Not guessing avoids hanging on a stale address that a stopped `ray start` leaves behind. Not
    `verbose`: workers' output stays in Ray's logs (plm-ray's own progress reaches the console
    through monitor.py) and Ray's logging goes to the process's own handlers (the CLI's log file)."""
    quiet = {"log_to_driver": verbose, "configure_logging": verbose, "logging_level": "WARNING"}
    if not verbose:
        _route_ray_logs()  # before init too: it warns about token authentication
    if starts_local_cluster():
        port = free_port(preferred=8265)
        with _environment(_local_cluster_env(port)):
            ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port, **quiet)
    elif not ray.is_initialized():
        ray.init(address=os.environ["RAY_ADDRESS"], **quiet)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not verbose:
        _route_ray_logs()


def _route_ray_logs() -> None:
    """Ray's libraries print past the process's logging: `ray` does not propagate (its warnings then
    reach Python's last-resort stderr handler), Ray Data adds its own stderr handler, and Tune's new
    output engine prints its experiment banner at any verbosity. Route them into the process's own
    handlers (the CLI's log file) and let Tune's verbosity hold."""
    logging.getLogger("ray").propagate = True
    data = logging.getLogger("ray.data")
    data.handlers = [h for h in data.handlers if isinstance(h, logging.FileHandler)]
    data.propagate = True
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def worker_logs() -> Path | None:
    """The folder of this machine's Ray session logs (the workers' output), where there is one."""
    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_logs_dir_path()) if node is not None else None


def starts_local_cluster() -> bool:
    return not ray.is_initialized() and os.environ.get("RAY_ADDRESS", "local") in ("", "local")


def _local_cluster_env(port: int) -> dict[str, str]:
    """The environment a local cluster's processes start with. Environment, not a job runtime_env: a
    runtime_env keeps Ray from handing the workers it prestarts to the job (every actor then waited
    for a new process: seconds more start-up, BENCHMARKS.md)."""
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
    # corpus (BENCHMARKS.md, benchmark 2)
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
