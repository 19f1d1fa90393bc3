"""Shared fixtures: one real local Ray cluster per test session, and small reduced configs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from plm_ray.config import Config, load_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Credentials for the loopback S3 server only (tests never reach a real endpoint). Set before the
# session's Ray cluster starts, so its workers read them from the environment as a user's would.
os.environ.update(
    AWS_ACCESS_KEY_ID="plm-test-key", AWS_SECRET_ACCESS_KEY="plm-test-secret-key", AWS_DEFAULT_REGION="us-east-1"
)

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


def small_config(store: Path | None, run: str, *extra: str) -> Config:
    root = [f"store.root={store}"] if store else []
    return load_config(None, [*SMALL, *root, f"run.name={run}", *extra])
