"""plm-ray's own commands on the GPU machine, run as a user runs them (`python -m plm_ray ...`), each
output line stamped with the wall-clock time it arrived: the stamps place the steady window the GPU
monitor is read over, and show where the start-up went."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.gpu.monitor import GpuMonitor

PRESET = ROOT / "pipelines" / "configs" / "gpu_bert_base.yaml"
SWEEP_PRESET = ROOT / "pipelines" / "configs" / "gpu_sweep.yaml"
STEP_LINE = re.compile(r"\[pretrain\] step (\d+)/\d+ loss")


def child_env() -> dict[str, str]:
    """This process's environment without the variables of its one-rank process group (the engine
    benchmarks make one): a child that inherited them would join a group that is not its own."""
    group = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    return {key: value for key, value in os.environ.items() if key not in group}


def run_stamped(args: list[str], log: Path, timeout: float = 600) -> list[tuple[float, str]]:
    """Run `python ARGS` from the repo root; (arrival time, line) for every line of its output, also
    written to `log`. Raises with the output's tail if the command fails."""
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[tuple[float, str]] = [(started, "[bench] started: " + " ".join(args))]
    assert proc.stdout is not None
    with log.open("a") as out:
        out.write(f"{started:.3f} {lines[0][1]}\n")
        for line in proc.stdout:
            now = time.time()
            lines.append((now, line.rstrip("\n")))
            out.write(f"{now:.3f} {line}")
            if now - started > timeout:
                proc.kill()
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n" + "\n".join(x for _, x in lines[-40:]))
    return lines


def pretrain(store: Path, run: str, sets: list[str], log: Path, monitor: GpuMonitor, skip: int) -> dict[str, Any]:
    """`plm-ray pretrain` with the shipped GPU preset and `sets`; its result.json and the steady
    window: tokens/s between the first logged step at or past `skip` and the last (the worker's own
    clock), the GPU's busy share between the times those two lines arrived."""
    args = [
        "-m",
        "plm_ray",
        "pretrain",
        "--config",
        str(PRESET),
        "--set",
        f"store.root={store}",
        "--set",
        f"run.name={run}",
    ]
    for s in sets:
        args += ["--set", s]
    lines = run_stamped(args, log)
    result = json.loads((store / run / "pretrain" / "result.json").read_text())
    history = json.loads((store / run / "pretrain" / "history.json").read_text())
    logged = [h for h in history if "elapsed_seconds" in h and h["step"] >= skip]
    first, last = logged[0], logged[-1]
    rate = (last["tokens"] - first["tokens"]) / (last["elapsed_seconds"] - first["elapsed_seconds"])
    arrivals = {int(m.group(1)): t for t, line in lines if (m := STEP_LINE.search(line))}
    window = monitor.window(arrivals[first["step"]], arrivals[last["step"]])
    return {
        "tokens_per_second": rate,
        "window_steps": [first["step"], last["step"]],
        **window,
        "startup_seconds": result["startup_seconds"],
        "precision": result["precision"],
        "zero_stage": result["zero_stage"],
        "command_seconds": lines[-1][0] - lines[0][0],
        "startup_lines": _startup_lines(lines),
    }


def _startup_lines(lines: list[tuple[float, str]]) -> list[str]:
    """The output up to the first logged step, each line with its seconds since the command began:
    where the start-up went."""
    began = lines[0][0]
    head = []
    for t, line in lines:
        head.append(f"{t - began:7.2f}  {line[:160]}")
        if STEP_LINE.search(line):
            break
    return head


def sweep(store: Path, run: str, sets: list[str], log: Path) -> dict[str, Any]:
    """`plm-ray sweep` with the shipped GPU sweep preset and `sets`; its results.json."""
    args = ["-m", "plm_ray", "sweep", "--config", str(SWEEP_PRESET), "--set", f"store.root={store}"]
    args += ["--set", f"run.name={run}"]
    for s in sets:
        args += ["--set", s]
    lines = run_stamped(args, log)
    results = json.loads((store / run / "sweep" / "results.json").read_text())
    return {**results, "command_seconds": lines[-1][0] - lines[0][0]}
