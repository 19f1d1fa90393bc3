"""Cluster mode on one machine: a real `ray start --head` (token auth on) plus a second node, jobs
submitted through the Ray Jobs SDK with a working dir, and a 2-worker run spread over both nodes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import SMALL

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")

def readme_job_submit() -> str:
    """The README's `ray job submit` command, as a user copies it (the first one, in "On a Ray cluster")."""
    return next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("ray job submit"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`ray start --block` in its own process group, so stopping it stops only this cluster."""
    return subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _ray(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    gcs, dash = _port(), _port()
    # As a user's client must: token auth stays on; the token is read from ~/.ray/auth_token. `python`
    # and `ray` are this environment's, as on a cluster whose image has plm-ray installed.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    second_temp = tempfile.mkdtemp(prefix="ray2-", dir="/tmp")
    procs = [
        _start(
            [
                "--head",
                f"--port={gcs}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                "--num-cpus=2",
                '--resources={"head_node": 1}',
                # a port of its own for each node's dashboard agent (the job server's helper): the
                # default one may be taken by another Ray on the machine (the test session's own)
                f"--dashboard-agent-listen-port={_port()}",
            ],
            env,
        )
    ]
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while _ray("job", "list", "--address", address, env=env).returncode != 0:
            assert time.time() < deadline, "the Ray job server did not come up"
            time.sleep(2)
        # The second node gets its own temp dir, as a second machine would: sharing the head's, its
        # runtime-env agent re-extracted the job's working dir in place (rmtree, unpack) under the
        # job's driver, whose cwd then no longer existed (`getcwd` failed in its next import).
        # Short, under /tmp: Ray's socket paths live there and must stay under 108 characters.
        procs.append(
            _start(
                [
                    f"--address=127.0.0.1:{gcs}",
                    "--node-ip-address=127.0.0.1",
                    "--num-cpus=2",
                    '--resources={"second_node": 1}',
                    f"--dashboard-agent-listen-port={_port()}",
                    f"--temp-dir={second_temp}",
                ],
                env,
            )
        )
        yield {"dashboard": address, "env": env, "store": str(tmp_path_factory.mktemp("cluster-store"))}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(second_temp, ignore_errors=True)


def _submit(head: dict[str, Any], script: str, *sets: str) -> tuple[int, str, str]:
    """`ray job submit` as the README gives it; returns (exit code, job id, job logs)."""
    args = [x for s in sets for x in ("--set", s)]
    cmd = [
        "job",
        "submit",
        "--address",
        head["dashboard"],
        "--working-dir",
        str(REPO),
        "--runtime-env",
        str(REPO / "pipelines" / "job.yaml"),
        "--",
        sys.executable,
        f"pipelines/{script}.py",
        *args,
    ]
    for _ in range(60):  # the head's job agent comes up a little after its job server
        done = _ray(*cmd, env=head["env"], timeout=900)
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(2)
    found = re.search(r"Job '(raysubmit_\w+)' submitted", done.stdout + done.stderr)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    logs = _ray("job", "logs", "--address", head["dashboard"], found.group(1), env=head["env"]).stdout
    return done.returncode, found.group(1), logs


def test_the_readme_job_runs_as_written_over_two_nodes(head: dict[str, Any]):
    """The README's command, with the test's small settings appended: pre-training and the sweep in a
    job, its two workers on different nodes and the cache's tasks on both."""
    # small chunks: many cache-building tasks, which the CPUs the workers leave on both nodes take
    spread = ["pretrain.placement_strategy=STRICT_SPREAD", "data.chunk_mb=0.05"]
    small = " ".join(f"--set {shlex.quote(s)}" for s in [*SMALL, *spread])
    env = {**head["env"], "RAY_ADDRESS": head["dashboard"], "STORE": head["store"]}
    for _ in range(60):  # the head's job agent comes up a little after its job server
        done = subprocess.run(
            ["bash", "-c", f"{readme_job_submit()} {small}"], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=900,
        )
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[pretrain] step 6/6" in done.stdout and "best: learning_rate" in done.stdout
    run = Path(head["store"]) / "first"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pretrain"]["steps"] == 6 and len(summary["sweep"]["trials"]) == 2
    assert summary["pretrain"]["nodes"] == 2, "the two workers must run on different nodes"
    assert (run / "pretrain" / "export" / "model.safetensors").is_file()
    assert (run / "sweep" / "results.csv").is_file() and (run / "sweep" / "best_model" / "config.json").is_file()
    assert list((run / "pretrain").glob("checkpoint_*/state/zero_pp_rank_1_*"))
    listed = _ray(
        "list", "tasks", "--address", head["dashboard"], "--format", "json", "--detail", "--limit", "10000",
        env=head["env"],
    )
    tokenize_nodes = {t["node_id"] for t in json.loads(listed.stdout) if "build_chunk" in t["name"]}
    assert len(tokenize_nodes) == 2, "the cache's Ray Data tasks should tokenize on both nodes"


def test_a_sweep_job_continues_the_run(head: dict[str, Any]):
    """`pipelines/sweep.py`: a second sweep of the README job's run, without pre-training again."""
    sets = [*SMALL, f"store.root={head['store']}", "run.name=first", "sweep.name=again", "sweep.learning_rates=[0.001]"]
    code, _, logs = _submit(head, "sweep", *sets)
    assert code == 0, logs[-3000:]
    assert json.loads((Path(head["store"]) / "first" / "again" / "result.json").read_text())["trials"]


def test_a_local_run_beside_a_ray_start_head_keeps_its_workers(head: dict[str, Any], tmp_path: Path):
    """`ray start` records its cluster as this machine's current one. A local run beside it starts its
    own Ray, whose Train placement-group cleaner asked the State API, unpinned, whether the run's
    controller was alive: it asked the `ray start` cluster and found no such actor."""
    env = {k: v for k, v in head["env"].items() if k != "RAY_ADDRESS"}
    sets = [*SMALL, f"store.root={tmp_path}", "run.name=beside", "pretrain.max_steps=30"]
    done = subprocess.run(
        [sys.executable, "-m", "plm_ray", "pretrain", *[x for s in sets for x in ("--set", s)]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert json.loads((tmp_path / "beside" / "pretrain" / "result.json").read_text())["steps"] == 30
    # asking the other cluster, the cleaner found no controller and quit (or removed the workers,
    # had the run's placement group been registered by then): either way the run lost its cleaner
    assert "Connecting to latest cluster" not in output and "may not be cleaned up" not in output, output[-6000:]


def test_failing_job_ends_failed_with_the_error_in_its_logs(head: dict[str, Any]):
    code, job, logs = _submit(head, "pretrain", f"store.root={head['store']}", "pretrain.bogus=1")
    status = _ray("job", "status", "--address", head["dashboard"], job, env=head["env"])
    assert code != 0 and f"Job '{job}' failed" in status.stdout + status.stderr, status.stderr
    assert "plm-ray: error: unknown config key 'pretrain.bogus'" in logs


def test_cluster_yaml_passes_rays_schema_and_has_gpu_workers():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does before launching anything
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0")
