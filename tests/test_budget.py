"""The pre-training time budget: the LR schedule position follows time or steps, whichever is
further along, and time spent by earlier attempts counts."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
import torch.distributed as dist

from plm_ray.budget import Budget
from plm_ray.engine import ensure_process_group

CPU = torch.device("cpu")


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """The position is broadcast from rank 0: a one-rank group in this process, gone afterwards with
    its MASTER_* variables (Ray clusters that later tests start inherit this process's environment).
    MASTER_PORT is set to a port in use, as a shell or a parent process can leave it: a trial's group
    takes a fresh port of its own (16 trials once failed EADDRINUSE on one inherited port)."""
    with socket.socket() as taken, mock.patch.dict(os.environ):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        os.environ["MASTER_PORT"] = str(taken.getsockname()[1])
        ensure_process_group(use_gpu=False)
        assert dist.get_world_size() == 1 and os.environ["MASTER_PORT"] != str(taken.getsockname()[1])
        yield
        dist.destroy_process_group()


def test_schedule_follows_time_or_steps_and_carries_earlier_attempts(one_rank_group: None):
    budget = Budget(minutes=2 / 60, total_steps=1000, spent_seconds=1.0, device=CPU)  # 2 s, 1 s already spent
    assert 500 <= budget.schedule_position(10) < 700  # half the time is gone: half the schedule
    assert budget.schedule_position(900) == 900  # steps further along than time
    assert not budget.exhausted(10)
    time.sleep(1.05)
    assert budget.schedule_position(11) >= 1000 and budget.exhausted(11)
    assert budget.seconds_left(11, steps_per_second=1.0) <= 0


def test_without_a_budget_deepspeed_counts_steps():
    budget = Budget(minutes=0, total_steps=100, spent_seconds=0.0, device=CPU)
    assert budget.schedule_position(5) is None
    assert not budget.exhausted(99) and budget.exhausted(100)
    assert budget.seconds_left(50, steps_per_second=10.0) == 5.0
