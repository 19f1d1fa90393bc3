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
from plm_ray.monitor import Stalled

from .conftest import small_config

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
def test_a_run_waiting_for_resources_it_cannot_get_says_so_and_stops(tmp_path: Path, capsys: pytest.CaptureFixture):
    watch = ["pretrain.num_workers=1", "run.stall_minutes=0.1", "run.exit_on_stall=true"]
    cfg = small_config(tmp_path, "stuck", *watch)
    pipeline.execute("prepare", cfg)  # the cache: what the stalled command waits for is then only its worker
    hog = Hog.remote()
    ray.get(hog.ready.remote())
    began = time.time()
    try:
        with pytest.raises(Stalled, match=r"no progress for 0\.1 min; waiting for resources: 1 placement group"):
            pipeline.execute("pretrain", small_config(tmp_path, "stuck", *watch))
    finally:
        ray.kill(hog)
    assert time.time() - began < 120
    assert "[plm-ray] no progress for" in capsys.readouterr().out
    assert not (tmp_path / "stuck" / "pretrain" / "result.json").exists()
    assert not (tmp_path / "stuck" / "summary.json").exists()
