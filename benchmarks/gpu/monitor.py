"""What the GPU does while a recipe runs, sampled from outside by `nvidia-smi` (utilization: the share
of each sample period in which a kernel ran; memory used), and the bf16 matmul peak."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch


class GpuMonitor:
    """Samples utilization.gpu and memory.used every 200 ms into (time, percent, MiB) rows, kept in
    memory and appended to `log` as CSV."""

    def __init__(self, log: Path):
        self.samples: list[tuple[float, float, float]] = []
        self.log = log
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> GpuMonitor:
        query = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            "-lms",
            "200",
        ]
        self._proc = subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with self.log.open("a") as out:
            for line in self._proc.stdout:
                try:
                    util, mem = (float(x) for x in line.split(","))
                except ValueError:
                    continue
                now = time.time()
                self.samples.append((now, util, mem))
                out.write(f"{now:.3f},{util:g},{mem:g}\n")

    def __exit__(self, *exc: object) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait()

    def window(self, start: float, end: float) -> dict[str, float]:
        """Mean utilization (0-1) and the most memory used between two wall-clock times."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"gpu_busy": float("nan"), "memory_mib": float("nan"), "samples": 0}
        return {
            "gpu_busy": statistics.fmean(u for u, _ in inside) / 100,
            "memory_mib": max(m for _, m in inside),
            "samples": len(inside),
        }


def bf16_peak_flops(n: int = 8192, repeats: int = 10) -> float:
    """The fastest of `repeats` n³ bf16 matmuls on random data after three warm-ups, timed with CUDA
    events: what the GPU's matrix units reach here (the datasheet's figure is a lead, not a ceiling)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        best = max(best, 2 * n**3 / (start.elapsed_time(end) / 1e3))
    return best
