"""Benchmark 4: per-rank memory of ZeRO stages 0-3 at 2 ranks (Ray Train + plm-ray's engine), with
fp32 weights (precision fp32, and bf16-mixed: autocast keeps fp32 weights) and with bf16 weights
(precision bf16, plm-ray's GPU default: bf16 parameters and gradients, fp32 master copy). Both run on
this CPU (bf16 emulated where the CPU lacks it: memory, not speed, is measured).

Each rank builds the benchmark BERT, takes three optimizer steps, then counts the bytes of every
live tensor storage in its process (parameters or their ZeRO partitions, gradients, optimizer
state, DeepSpeed's flat buffers; shared storages once) and reads its peak RSS.

Run as a child: python -m benchmarks.memory TOKENIZER_SIZE OUT_JSON"""

from __future__ import annotations

import gc
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from benchmarks.train import bert
from benchmarks.zero import engine_spec, random_batch
from plm_ray.engine.engine import Engine
from plm_ray.hardware import Hardware
from plm_ray.model.heads import SparseMLM

STAGES = (0, 1, 2, 3)
WEIGHTS = ("fp32", "bf16")


def live_tensor_bytes() -> int:
    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            tensors = [obj, getattr(obj, "ds_tensor", None)]  # ZeRO-3 keeps the partition beside .data
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    storage = t.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def measure_rank(config: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    baseline = live_tensor_bytes()
    hardware = Hardware(use_gpu=False, precision=config["weights"], attention="eager", threads=1)
    engine = Engine(SparseMLM(bert(config["n_tokens"], pad_vocab=True)), engine_spec(config["stage"]), hardware)
    generator = torch.Generator().manual_seed(rank)
    ds = engine.engine
    for _ in range(3):
        ds.backward(ds(**random_batch(config["n_tokens"], generator))["loss"])
        # counted between backward and step, when gradients and optimizer state are both alive
        state_bytes = live_tensor_bytes() - baseline
        ds.step()
    result = {"state_bytes": state_bytes, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    Path(config["out"], f"{config['weights']}-stage{config['stage']}-rank{rank}.json").write_text(json.dumps(result))


def main(n_tokens: int, out_json: str) -> None:
    ray.init(address="local", num_cpus=2, logging_level="WARNING")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for weights in WEIGHTS:
            for stage in STAGES:
                TorchTrainer(
                    measure_rank,
                    train_loop_config={"n_tokens": n_tokens, "stage": stage, "weights": weights, "out": tmp},
                    scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                    torch_config=TorchConfig(backend="gloo"),
                    run_config=RunConfig(name=f"{weights}-zero{stage}", storage_path=tmp),
                ).fit()
                ranks = [json.loads(Path(tmp, f"{weights}-stage{stage}-rank{r}.json").read_text()) for r in (0, 1)]
                results.setdefault(weights, {})[str(stage)] = {key: max(r[key] for r in ranks) for key in ranks[0]}
    Path(out_json).write_text(json.dumps(results))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
