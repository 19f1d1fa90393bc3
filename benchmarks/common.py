"""What every benchmark needs: medians, the matmul peak, useful-FLOP counts, peak memory of a
process tree and running the real `plm-ray` command."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
# The shape the throughput targets are stated for: BERT 4 layers / 256 hidden, vocab 30,522, 32 x 128.
MODEL_SETS = [
    "model.preset=mini",
    "tokenizer.vocab_size=30522",
    "data.block_size=128",
    "pretrain.batch_size=32",
    "masking.probability=0.15",
]
SEQ, BATCH, MASK_RATE = 128, 32, 0.15


def median(values: list[float]) -> float:
    return statistics.median(values)


def matmul_peak_flops(threads: int, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """The fastest GEMM rate over a few square sizes in `dtype`, with the threads the benchmarks use.
    The fastest repeat, not the median: a peak is what the machine can do, and on a shared machine a
    median taken in a busy moment would understate it and flatter every fraction of it."""
    torch.set_num_threads(threads)
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def useful_flops_per_token(
    layers: int, hidden: int, intermediate: int, vocab: int, seq: int, mask_rate: float
) -> float:
    """Training FLOPs (forward + backward = 3 x forward, 2 per multiply-add) of what MLM needs: the
    encoder's matmuls and attention scores for every token, the MLM head only at masked positions.
    Embedding lookups, norms and activations are not matmuls and are not counted."""
    encoder_weights = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = layers * 2 * seq * hidden  # QK^T and AV, per token
    head = (hidden * hidden + hidden * vocab) * mask_rate
    return 6 * (encoder_weights + attention + head)


class TreeMonitor:
    """Samples a process and all its descendants every `interval` seconds: CPU seconds per process
    (to show where a run's time goes) and, if `memory`, the peak of their summed proportional set
    size (PSS: shared pages split between the processes mapping them, so Ray's shared-memory object
    store is not counted once per worker); every sample is kept in `samples` as (time, bytes). PSS
    reads every process's smaps, which costs CPU that throughput runs must not lose, hence off unless
    asked for."""

    def __init__(self, pid: int, memory: bool, interval: float = 1.0):
        self.root, self.memory, self.interval, self.peak = psutil.Process(pid), memory, interval, 0
        self.root_peak = 0  # of the root process alone (a command's driver)
        self.cpu: dict[int, tuple[str, float]] = {}
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    name = proc.cmdline()[0].rsplit("/", 1)[-1] if proc.pid != self.root.pid else "command (driver)"
                    self.cpu[proc.pid] = (name, times.user + times.system)
                    pss = proc.memory_full_info().pss if self.memory else 0
                    total += pss
                    if proc.pid == self.root.pid:
                        self.root_peak = max(self.root_peak, pss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                    pass
            self.peak = max(self.peak, total)
            self.samples.append((time.time(), total))
            self._stop.wait(self.interval)

    def cpu_by_name(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for name, seconds in self.cpu.values():
            totals[name] = totals.get(name, 0.0) + seconds
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_python(args: list[str], measure_memory: bool = False, timeout: float = 1800) -> tuple[str, float, TreeMonitor]:
    """Run `python ARGS` from the repo root; returns (output, wall seconds, its TreeMonitor). Raises
    with the tail of the output if it fails, so a broken benchmark prints no figure."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with TreeMonitor(proc.pid, measure_memory, interval=1.0 if measure_memory else 2.0) as monitor:
        out, _ = proc.communicate(timeout=timeout)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{out[-3000:]}")
    return out, wall, monitor


def plm_ray(command: str, store: Path, sets: list[str]) -> dict[str, Any]:
    """The real CLI (`plm-ray pretrain ...`) in a fresh process; returns the run's result.json plus
    its history, the command's wall time and CPU seconds per process."""
    run = sets_value(sets, "run.name")
    args = ["-m", "plm_ray", command, "--set", f"store.root={store}"]
    for s in sets:
        args += ["--set", s]
    out, wall, monitor = run_python(args)
    result = json.loads((store / run / command / "result.json").read_text())
    history = json.loads((store / run / command / "history.json").read_text())
    return {**result, "history": history, "command_seconds": wall, "cpu_seconds": monitor.cpu_by_name()}


def sets_value(sets: list[str], key: str) -> str:
    return next(s.split("=", 1)[1] for s in sets if s.startswith(key + "="))


def steady_tokens_per_second(history: list[dict[str, Any]], skip_steps: int) -> float:
    """Median rate over the logged intervals after `skip_steps` (warm-up, allocator growth)."""
    logs = [h for h in history if "elapsed_seconds" in h and h["step"] >= skip_steps]
    pairs = zip(logs, logs[1:], strict=False)
    rates = [(b["tokens"] - a["tokens"]) / (b["elapsed_seconds"] - a["elapsed_seconds"]) for a, b in pairs]
    if not rates:
        raise RuntimeError(f"no logged intervals after step {skip_steps}; raise max_steps")
    return median(rates)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[f"{c:,.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"\n## {title}\n", "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells[1:]]
    return "\n".join(lines)
