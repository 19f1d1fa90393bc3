"""A wall-clock budget for pre-training, as Cramming trains: the learning-rate schedule advances by
whichever is further along, optimizer steps or training time, and training ends when either runs out.
A recipe then ends inside its budget on a slow machine and still decays its rate to zero there, and
a fast machine takes as many steps as `max_steps` allows. Without a budget DeepSpeed counts steps."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


class Budget:
    def __init__(self, minutes: float, total_steps: int, device: torch.device):
        self.seconds = minutes * 60
        self.total_steps = total_steps
        self.device = device
        self.start(0.0)

    def start(self, spent_seconds: float) -> None:
        """Training starts now, after `spent_seconds` of earlier attempts (from the checkpoint)."""
        self.spent_before = spent_seconds
        self.started = time.time()
        self.time_position = 0  # the schedule step that the training time so far corresponds to

    def spent(self) -> float:
        """Training seconds the model has had, earlier attempts included (time lost to a failure
        after the last checkpoint is not: those steps are taken again)."""
        return self.spent_before + time.time() - self.started

    def schedule_position(self, steps_taken: int) -> int | None:
        """DeepSpeed's `last_batch_iteration` for the optimizer step about to be taken (its own count
        would be `steps_taken`), or None without a budget."""
        if not self.seconds:
            return None
        fraction = torch.tensor([self.spent() / self.seconds], dtype=torch.float64, device=self.device)
        dist.broadcast(fraction, src=0)  # rank 0's clock: every rank takes the same rate and stops together
        self.time_position = int(fraction.item() * self.total_steps)
        return max(steps_taken, self.time_position)

    def exhausted(self, step: int) -> bool:
        return step >= self.total_steps or self.time_position >= self.total_steps

    def seconds_left(self, step: int, steps_per_second: float) -> float:
        by_steps = (self.total_steps - step) / steps_per_second
        return min(by_steps, self.seconds - self.spent()) if self.seconds else by_steps
