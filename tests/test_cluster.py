"""Cluster mode on one machine: a real `ray start --head` (token auth on) plus a second node, jobs
submitted through the Ray Jobs SDK with a working dir, and a 2-worker run spread over both nodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import SMALL

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
EXCLUDES = [".git", ".venv", "plm_store", "**/__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]


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


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    gcs, dash = _port(), _port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
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
            ],
            env,
        )
    ]
    try:
        from ray.job_submission import JobSubmissionClient

        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        procs.append(
            _start(
                [
                    f"--address=127.0.0.1:{gcs}",
                    "--node-ip-address=127.0.0.1",
                    "--num-cpus=2",
                    '--resources={"second_node": 1}',
                ],
                env,
            )
        )
        yield {"dashboard": address, "gcs": f"127.0.0.1:{gcs}", "store": str(tmp_path_factory.mktemp("cluster-store"))}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _submit(head: dict[str, str], script: str, *sets: str) -> tuple[str, str]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    os.environ["RAY_AUTH_MODE"] = "token"  # the client reads the token from ~/.ray/auth_token
    client = JobSubmissionClient(head["dashboard"])
    args = " ".join(f"--set '{s}'" for s in sets)
    job = client.submit_job(
        entrypoint=f"{sys.executable} pipelines/{script}.py {args}",
        runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES},
    )
    deadline = time.time() + 600
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, f"job {job} still {status}"
        time.sleep(3)
    return str(status), client.get_job_logs(job)


def test_jobs_pretrain_then_sweep_spread_over_two_nodes(head: dict[str, str]):
    common = [*SMALL, f"store.root={head['store']}", "run.name=job"]
    status, logs = _submit(head, "pretrain", *common, "pretrain.placement_strategy=STRICT_SPREAD")
    assert status == "SUCCEEDED", logs[-3000:]
    assert "[pretrain] step 6/6" in logs
    result = json.loads((Path(head["store"]) / "job" / "pretrain" / "result.json").read_text())
    assert result["nodes"] == 2, "the two workers must run on different nodes"
    status, logs = _submit(head, "sweep", *common)
    assert status == "SUCCEEDED", logs[-3000:]
    run = Path(head["store"]) / "job"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pretrain"]["steps"] == 6 and len(summary["sweep"]["trials"]) == 2
    assert (run / "sweep" / "results.csv").is_file() and (run / "sweep" / "best_model" / "config.json").is_file()
    assert list((run / "pretrain").glob("checkpoint_*/state/zero_pp_rank_1_*"))


def test_failing_job_ends_failed_with_the_error_in_its_logs(head: dict[str, str]):
    status, logs = _submit(head, "pretrain", f"store.root={head['store']}", "pretrain.bogus=1")
    assert status == "FAILED"
    assert "plm-ray: error: unknown config key 'pretrain.bogus'" in logs


def test_cluster_yaml_passes_rays_schema_and_has_gpu_workers():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(config)
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0")
