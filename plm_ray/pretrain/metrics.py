"""What pre-training measures: the held-out evaluation and the training loss and rate between log
lines."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.distributed as dist

from plm_ray.config import Config
from plm_ray.data.masking import MaskingTables, mask_tokens
from plm_ray.engine.engine import Engine


class Evaluator:
    """Held-out MLM loss, perplexity and masked-token accuracy on a fixed set of blocks. Masks are
    drawn from a fixed seed so successive evaluations are comparable; every rank runs the same
    number of batches (required under ZeRO-3, where forward passes gather across ranks)."""

    def __init__(self, blocks: np.ndarray, rank: int, world: int, batch: int, tables: MaskingTables, cfg: Config):
        usable = len(blocks) - len(blocks) % world
        mine = torch.from_numpy(blocks[:usable][rank::world].astype(np.int64)).to(tables.special.device)
        generator = torch.Generator(device=mine.device).manual_seed(12345 + rank)
        self.batches = [mask_tokens(chunk, tables, cfg.masking, generator) for chunk in mine.split(batch)]

    def __call__(self, engine: Engine) -> dict[str, float]:
        totals = torch.zeros(3, dtype=torch.float64, device=engine.device)
        for batch in self.batches:
            out = engine.forward(batch)
            totals += torch.stack([out["loss"].double() * out["count"], out["correct"].double(), out["count"].double()])
        dist.all_reduce(totals)
        loss = (totals[0] / totals[2]).item()
        return {
            "eval_loss": loss,
            "eval_perplexity": math.exp(min(loss, 50.0)),
            "eval_accuracy": (totals[1] / totals[2]).item(),
        }


class Meter:
    """The training loss and rate over the micro-steps since the last log line, summed on the device
    (read back only when logged, so the host never waits for the GPU in between)."""

    def __init__(self, device: torch.device, step: int):
        self.loss_sum = torch.zeros((), device=device)
        self.micro_steps = 0
        self.started, self.start_step = time.time(), step
        self.first_step_unix = 0.0  # this attempt's first optimizer step: start-up ends there

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.micro_steps += 1

    def take_loss(self) -> float:
        loss = (self.loss_sum / self.micro_steps).item()
        self.loss_sum.zero_()
        self.micro_steps = 0
        return loss
