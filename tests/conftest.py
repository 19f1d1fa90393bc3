"""Shared fixtures: one real local Ray cluster per test session, and small reduced configs."""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import ray
import torch.distributed as dist

from plm_ray.config import Config, OptimizerSection, load_config
from plm_ray.engine.deepspeed_config import EngineSpec

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Credentials for the loopback S3 server only (tests never reach a real endpoint). Set before the
# session's Ray cluster starts, so its workers read them from the environment as a user's would.
os.environ.update(
    AWS_ACCESS_KEY_ID="plm-test-key", AWS_SECRET_ACCESS_KEY="plm-test-secret-key", AWS_DEFAULT_REGION="us-east-1"
)

# W&B writes its runs to files here instead of its servers (tests never reach the network); set before
# the session's Ray cluster starts, so trials and workers inherit it as a user's shell would hand it on.
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=tempfile.mkdtemp(prefix="plm-wandb-"))
LABELED_TEXTS = ["the plot was thin", "an ordinary film", "a moving story", "the acting was wooden", "it was fun"]

# Small enough for a 2-core CI machine, but every stage runs for real.
SMALL = [
    "data.block_size=32",
    "data.eval_blocks=16",
    "tokenizer.vocab_size=512",
    "pretrain.batch_size=8",
    "pretrain.max_steps=6",
    "pretrain.warmup_steps=2",
    "pretrain.log_every_steps=1",
    "sweep.learning_rates=[0.0005, 0.002]",
    "sweep.epochs=1",
    "sweep.max_length=32",
]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    from plm_ray.cluster import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=2)  # as a command starts its local Ray
    yield
    ray.shutdown()


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A one-rank process group in this process, as a sweep trial makes one (the budget broadcasts
    over it; an engine needs it), gone afterwards with its MASTER_* variables (Ray clusters that later
    tests start inherit this process's environment). MASTER_PORT is set to a port in use, as a shell
    or a parent process can leave it: a trial's group takes a fresh port of its own (16 trials once
    failed EADDRINUSE on one inherited port)."""
    with socket.socket() as taken, mock.patch.dict(os.environ):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        os.environ["MASTER_PORT"] = str(taken.getsockname()[1])
        from plm_ray.engine.engine import ensure_process_group
        from plm_ray.hardware import Hardware

        ensure_process_group(Hardware(False, "fp32", "eager", 1))
        assert dist.get_world_size() == 1 and os.environ["MASTER_PORT"] != str(taken.getsockname()[1])
        yield
        dist.destroy_process_group()


def engine_spec(**changes: object) -> EngineSpec:
    """An engine spec for tests that build engines directly: one micro-batch a step, AdamW's defaults."""
    spec = EngineSpec(
        micro_batch=32,
        grad_accum=1,
        zero_stage=2,
        offload=False,
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_steps=10,
        total_steps=100,
        schedule="linear",
        grad_clip=1.0,
        hidden_size=256,
        optimizer=OptimizerSection(),
    )
    return dataclasses.replace(spec, **changes)


def small_config(store: Path | None, run: str, *extra: str) -> Config:
    root = [f"store.root={store}"] if store else []
    return load_config(None, [*SMALL, *root, f"run.name={run}", *extra])
