"""The console entry point, as a user runs it: a fresh process that starts its own local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SMALL

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # RAY_ADDRESS=local: a fresh cluster of its own, even while another test's cluster runs
    env = {**os.environ, "RAY_ADDRESS": "local"}
    return subprocess.run(
        [sys.executable, "-m", "plm_ray", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_run_end_to_end_then_store_ls(tmp_path: Path):
    sets = [x for s in SMALL for x in ("--set", s)]
    done = _cli("run", *sets, "--set", "run.name=cli", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "plm_store" / "cli" / "summary.json").read_text())
    assert summary["pretrain"]["steps"] == 6 and len(summary["sweep"]["trials"]) == 2
    assert "best: learning_rate" in done.stdout and "[pretrain] step 6/6" in done.stdout
    # quiet by default: plm-ray's own progress, then the summary, last; Ray's, Tune's and DeepSpeed's
    # output is in the run's logs, and nothing plm-ray does draws a warning
    assert len(done.stdout.splitlines()) <= 40, done.stdout
    assert done.stdout.splitlines()[-1] == f"logs: {tmp_path / 'plm_store' / 'cli'}/logs"
    assert done.stderr == "", done.stderr
    logs = tmp_path / "plm_store" / "cli" / "logs"
    assert (logs / "driver.log").stat().st_size > 0 and list(logs.glob("worker-*"))
    listing = _cli("store", "ls", str(tmp_path / "plm_store"), cwd=tmp_path)
    assert listing.returncode == 0 and listing.stdout.startswith("cli\tcomplete\tpretrain,sweep")


def test_missing_corpus_is_one_line_and_exit_2(tmp_path: Path):
    done = _cli("pretrain", "--set", f"data.corpus={tmp_path / 'nope'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"plm-ray: error: corpus path not found: {tmp_path / 'nope'}"
