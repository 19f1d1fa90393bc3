"""Nothing hangs in silence: a dead builder's lock on DeepSpeed's CPU op is cleared, and a command that
waits for resources it can never get says what it waits for and, with run.exit_on_stall, stops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from plm_ray import pipeline

from .conftest import SMALL, small_config

pytestmark = pytest.mark.slow
BUILD_OPS = "from plm_ray.engine.ops import ensure_cpu_ops; ensure_cpu_ops(); print('built')"


def _build_ops(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BUILD_OPS], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_lock_left_by_an_interrupted_op_build_is_cleared(tmp_path: Path):
    from plm_ray.engine.ops import extensions_dir

    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    assert _build_ops(env, timeout=600).returncode == 0  # the op as every run builds it (once per machine)
    # a copy of the built op, with the lock a builder killed mid-build leaves: torch waits on it forever
    copy = tmp_path / "extensions"
    shutil.copytree(extensions_dir(), copy)
    (lock,) = [d / "lock" for d in copy.iterdir() if d.is_dir()]
    lock.touch()
    os.utime(lock, (time.time() - 60, time.time() - 60))
    done = _build_ops({**env, "TORCH_EXTENSIONS_DIR": str(copy)}, timeout=300)
    assert done.returncode == 0 and "built" in done.stdout, done.stderr
    assert "interrupted" in done.stderr and not lock.exists()


@ray.remote(num_cpus=2)
class Hog:
    """Holds every CPU of the test session's cluster."""

    def ready(self) -> bool:
        return True


@pytest.mark.usefixtures("ray_cluster")
def test_a_run_waiting_for_resources_it_cannot_get_says_so_and_exits_3(tmp_path: Path):
    """The CLI joins the test session's cluster, whose CPUs a Hog holds: its worker can never start."""
    sets = [*SMALL, f"store.root={tmp_path}", "run.name=stuck", "pretrain.num_workers=1"]
    pipeline.execute("prepare", small_config(tmp_path, "stuck", "pretrain.num_workers=1"))  # the cache, first
    watch = ["run.stall_minutes=0.1", "run.exit_on_stall=true"]
    hog = Hog.remote()
    ray.get(hog.ready.remote())
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "plm_ray", "pretrain", *[x for s in [*sets, *watch] for x in ("--set", s)]],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        ray.kill(hog)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    said = "no progress for 0.1 min; waiting for resources: 1 placement group(s) and 0 actor(s) asking {'CPU': 1.0}"
    assert f"[plm-ray] {said}" in done.stdout and f"plm-ray: stalled: {said}" in done.stderr
    assert not (tmp_path / "stuck" / "pretrain" / "result.json").exists()
    assert not (tmp_path / "stuck" / "summary.json").exists()
    assert (tmp_path / "stuck" / "logs" / "driver.log").is_file()
