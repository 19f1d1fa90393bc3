"""Benchmark 1b's step profile puts each op's time under the right kind of work."""

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from benchmarks.profile import OPTIMIZER_SCOPE, ORDER, step_profile


def test_step_profile_sorts_ops_into_kinds():
    weights = torch.randn(256, 256, requires_grad=True)
    optimizer = torch.optim.AdamW([weights])

    def step(i: int) -> None:
        x = torch.randn(64, 256)
        loss = F.dropout(x @ weights, p=0.1, training=True).to(torch.bfloat16).float().sum()
        loss.backward()
        with record_function(OPTIMIZER_SCOPE):
            optimizer.step()
            optimizer.zero_grad()

    step(0)
    ms = step_profile(step, first=1, steps=3)
    assert list(ms) == list(ORDER)
    for kind in ("matmuls", "dropout's random numbers", "copies and dtype casts", "optimizer and clipping"):
        assert ms[kind] > 0, kind
    assert all(value >= 0 for value in ms.values())
