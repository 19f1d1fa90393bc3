"""Benchmark 1b: where a training step's time goes, by kind of work (`torch.profiler`, self CPU time of
each PyTorch op), and how fast the matmuls themselves run: the ceiling of the useful-FLOP fraction if
everything that is not a matmul took no time."""

from __future__ import annotations

import time
from collections.abc import Callable

from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

# op name -> kind; every op not named here counts as "other element-wise" (LayerNorm, GELU, softmax,
# the loss's log-softmax over the vocabulary, adds, embedding lookups and their backward, the autograd
# engine's work per node)
KINDS = {
    **dict.fromkeys(("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"), "matmuls"),
    **dict.fromkeys(("aten::bernoulli_", "aten::uniform_"), "dropout's random numbers"),
    **dict.fromkeys(("aten::copy_", "aten::_to_copy", "aten::clone"), "copies and dtype casts"),
}
OPTIMIZER_SCOPE = "optimizer"  # the record_function around clipping, AdamW's step and zero_grad
ORDER = (
    "matmuls",
    "dropout's random numbers",
    "copies and dtype casts",
    "optimizer and clipping",
    "other element-wise",
    "outside PyTorch ops",
)


def kind_of(event: FunctionEvent) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == OPTIMIZER_SCOPE:
            return "optimizer and clipping"
        parent = parent.cpu_parent
    return KINDS.get(event.name, "other element-wise")


def step_profile(step: Callable[[int], None], first: int, steps: int) -> dict[str, float]:
    """Milliseconds per step by kind for steps first .. first+steps-1 (the caller has warmed up).
    "outside PyTorch ops" is the wall time no profiled event accounts for, mostly Python."""
    ms = dict.fromkeys(ORDER, 0.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for i in range(first, first + steps):
            step(i)
        wall_ms = (time.perf_counter() - start) * 1e3
    for event in prof.events():
        if event.name != OPTIMIZER_SCOPE:
            ms[kind_of(event)] += event.self_cpu_time_total / 1e3
    ms["outside PyTorch ops"] = max(0.0, wall_ms - sum(ms.values()))
    return {kind: value / steps for kind, value in ms.items()}
