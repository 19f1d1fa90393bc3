"""What plm-ray refuses to trust: pickles in checkpoints, and a local Ray reachable from the network."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plm_ray.engine.engine import SafeCheckpointEngine

PACKAGE = Path(__file__).resolve().parent.parent / "plm_ray"


class _Payload:
    """Unpickling this runs a command: what a malicious checkpoint file would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_loader_refuses_code_in_a_pickle(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "extra": _Payload(marker)}, evil)
    with pytest.raises(ValueError, match=f"refusing to unpickle {evil}"):
        SafeCheckpointEngine().load(str(evil))
    assert not marker.exists(), "the payload ran"
    # what DeepSpeed really writes still loads
    good = tmp_path / "good.pt"
    torch.save({"module": {"w": torch.ones(2)}, "global_steps": 3, "ds_version": "0.19"}, good)
    assert SafeCheckpointEngine().load(str(good))["global_steps"] == 3


def test_every_torch_load_in_the_package_passes_weights_only_true():
    calls, pickle_reads = [], []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.append((path.name, {k.arg: ast.unparse(k.value) for k in node.keywords}))
            if isinstance(node, ast.Attribute) and ast.unparse(node) in ("pickle.load", "pickle.loads"):
                pickle_reads.append(path.name)
    assert calls, "the checkpoint loader's torch.load was not found"
    assert all(kw.get("weights_only") == "True" for _, kw in calls), calls
    assert not pickle_reads, pickle_reads


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only():
    """A command's own Ray: dashboard and job server bound to 127.0.0.1, not every interface."""
    probe = (
        "import psutil, ray\n"
        "from plm_ray.cluster import ensure_ray\n"
        "ensure_ray()\n"
        "url = ray.get_runtime_context().get_node_id() and ray._private.worker.global_worker.node.webui_url\n"
        "port = int(url.rsplit(':', 1)[1])\n"
        "hosts = {c.laddr.ip for c in psutil.net_connections('tcp') if c.laddr.port == port and c.status == 'LISTEN'}\n"
        "print(url, sorted(hosts))\n"
    )
    env = {**os.environ, "RAY_ADDRESS": "local"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    url, hosts = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert url.startswith("127.0.0.1:") and hosts == "['127.0.0.1']", done.stdout
