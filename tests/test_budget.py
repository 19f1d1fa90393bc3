"""The pre-training time budget: the LR schedule position follows time or steps, whichever is
further along, and time spent by earlier attempts counts."""

from __future__ import annotations

import time

import torch

from plm_ray.pretrain.budget import Budget

CPU = torch.device("cpu")


def test_schedule_follows_time_or_steps_and_carries_earlier_attempts(one_rank_group: None):
    budget = Budget(minutes=2 / 60, total_steps=1000, device=CPU)
    budget.start(spent_seconds=1.0)  # 2 s, 1 s already spent by earlier attempts
    assert 500 <= budget.schedule_position(10) < 700  # half the time is gone: half the schedule
    assert budget.schedule_position(900) == 900  # steps further along than time
    assert not budget.exhausted(10)
    time.sleep(1.05)
    assert budget.schedule_position(11) >= 1000 and budget.exhausted(11)
    assert budget.seconds_left(11, steps_per_second=1.0) <= 0


def test_without_a_budget_deepspeed_counts_steps():
    budget = Budget(minutes=0, total_steps=100, device=CPU)
    assert budget.schedule_position(5) is None
    assert not budget.exhausted(99) and budget.exhausted(100)
    assert budget.seconds_left(50, steps_per_second=10.0) == 5.0
