"""`python -m benchmarks [--corpus DIR]` (or `make bench`): every benchmark side by side in one run,
tables on stdout, the headline ratios in bench-results.json. See BENCHMARKS.md for a recorded run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import deepspeed
import psutil
import ray
import torch
import transformers

from benchmarks.common import BATCH, MASK_RATE, ROOT, SEQ, matmul_peak_flops, run_python, table, useful_flops_per_token
from benchmarks.data import run_data
from benchmarks.profile import ORDER
from benchmarks.train import plm_ray_pretrain, run_scaling, run_training, tokenizer_set
from plm_ray.config import PRESETS
from plm_ray.model.build import padded_vocab

GIB, MIB = 2**30, 2**20


def startup(store: Path, shard: Path) -> dict[str, float]:
    """Benchmark 5: command start to the first optimizer step (each run's result.json). Cold: an
    empty torch extension cache (DeepSpeed JIT-builds its CPU op there) and a new run; warm: the same
    command again."""
    runs = {}
    with tempfile.TemporaryDirectory() as extensions:
        os.environ["TORCH_EXTENSIONS_DIR"] = extensions
        for kind in ("cold", "warm"):
            result = plm_ray_pretrain(
                store, str(shard), f"bench-start-{kind}", 1, 2, [tokenizer_set(store), "pretrain.max_steps=2"]
            )
            runs[kind] = result["startup_seconds"]
        del os.environ["TORCH_EXTENSIONS_DIR"]
    return runs


def step_breakdown(train: dict[str, Any], flops: float, peaks: dict[str, float]) -> tuple[str, list[str], list[list]]:
    """Table 1b: the plain loops' steps by kind of work, the rate of their matmuls alone (what the
    useful-FLOP fraction would be if nothing else took time) and the step time 50 % would need."""
    profiles = {"fp32": train["d_profile"], "bf16": train["d16_profile"]}
    step_flops = flops * BATCH * SEQ
    total = {dtype: sum(p.values()) for dtype, p in profiles.items()}
    rows: list[list] = [
        [kind, *[x for d, p in profiles.items() for x in (p[kind], f"{p[kind] / total[d]:.1%}")]] for kind in ORDER
    ]
    rows.append(["whole step (profiled)", *[x for d in profiles for x in (total[d], "")]])
    rows.append(
        [
            "matmuls alone: useful FLOP/s, of the peak",
            *[x for d, p in profiles.items() for x in (f"{step_flops / (p['matmuls'] / 1e3) / peaks[d]:.1%}", "")],
        ]
    )
    rows.append(
        ["step time 50 % of the peak needs", *[x for d in profiles for x in (step_flops / (0.5 * peaks[d]) * 1e3, "")]]
    )
    return (
        "1b. Where a step of the plain loops goes: (d) fp32 and (d16) bf16, torch.profiler, self time of each op, "
        "ms per step",
        ["kind of work", "(d) fp32 ms", "share", "(d16) bf16 ms", "share"],
        rows,
    )


def memory(n_tokens: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run_python(["-m", "benchmarks.memory", str(n_tokens), out.name])
        return json.loads(Path(out.name).read_text())


def exchange(n_tokens: int, autocast: bool) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run_python(["-m", "benchmarks.exchange", str(n_tokens), str(autocast), out.name])
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "corpus")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args()
    shard = args.corpus / "enwiki_00.txt"
    if not shard.is_file():
        raise SystemExit(f"corpus shard not found: {shard} (pass --corpus DIR with enwiki_*.txt)")
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # Ray workers import benchmarks
    threads = min(2, os.cpu_count() or 1)
    began = time.time()
    print(
        f"# plm-ray benchmarks\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB; torch {torch.__version__}, ray {ray.__version__}, "
        f"deepspeed {deepspeed.__version__}, transformers {transformers.__version__}",
        flush=True,
    )
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {k: matmul_peak_flops(threads, dtype) for k, dtype in dtypes.items()}
    with tempfile.TemporaryDirectory(prefix="plm-bench-") as tmp:
        store = Path(tmp)
        train = run_training(store, shard, threads)
        # measured again after benchmark 1, the higher kept: the machine's speed drifts
        peaks = {k: max(peaks[k], matmul_peak_flops(threads, dtype)) for k, dtype in dtypes.items()}
        layers, hidden, _, inter = PRESETS["mini"]
        flops = useful_flops_per_token(layers, hidden, inter, train["vocab"], SEQ, MASK_RATE * (SEQ - 1) / SEQ)
        precision = train["a_result"]["precision"]  # what plm-ray's defaults chose on this machine
        dtype = "bf16" if precision.startswith("bf16") else "fp32"  # the matmul peak it is measured against
        stage = train["a_result"]["zero_stage"]
        recipes = {  # key: (name, precision it runs in)
            "a": (f"(a) plm-ray pretrain, defaults ({precision}, ZeRO auto: {stage}), 1 Ray Train worker", dtype),
            "a2": ("(a2) the same with pretrain.zero_stage=2", dtype),
            "a32": ("(a32) the same, pretrain.precision=fp32", "fp32"),
            "a0": (f"(a0) the same ({precision}) without dropout, model.dropout=0 (the wiki recipe's)", dtype),
            "b": ("(b) HF Trainer + DataCollatorForLanguageModeling (fp32, its default)", "fp32"),
            "b16": ("(b16) the same with bf16=True (HF's CPU autocast)", "bf16"),
            "c": ("(c) plain PyTorch loop, HF collator, dense MLM head (fp32)", "fp32"),
            "d": ("(d) plain PyTorch loop, plm-ray masking + sparse head (fp32)", "fp32"),
            "d16": ("(d16) the same under bf16 autocast", "bf16"),
        }
        print(
            table(
                f"1. Training step: BERT {layers}L/{hidden}H, vocab {train['vocab']:,} (plm-ray pads it to "
                f"{padded_vocab(train['vocab']):,}), {BATCH}x{SEQ}, {threads} threads; useful "
                f"{flops / 1e6:.1f} MFLOP/token; matmul peak fp32 {peaks['fp32'] / 1e9:.0f}, "
                f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; (a) and (b): median of a first and a last run",
                ["recipe", "tokens/s", "useful GFLOP/s", "of its precision's peak", "vs (b)", "vs (b16)"],
                [
                    [
                        name,
                        train[k],
                        train[k] * flops / 1e9,
                        f"{train[k] * flops / peaks[dtype]:.1%}",
                        train[k] / train["b"],
                        train[k] / train["b16"],
                    ]
                    for k, (name, dtype) in recipes.items()
                ],
            ),
            flush=True,
        )
        print(table(*step_breakdown(train, flops, peaks)), flush=True)
        cpu = train["a_result"]["cpu_seconds"]
        print(
            table(
                f"1a. Where (a)'s CPU time goes: the whole command, {train['a_result']['command_seconds']:.0f} s wall",
                ["process", "CPU seconds", "share"],
                [[name, sec, f"{sec / sum(cpu.values()):.1%}"] for name, sec in list(cpu.items())[:8]],
            ),
            flush=True,
        )
        start = startup(store, shard)
        print(
            table(
                "5. Start-up: command to first optimizer step (seconds)",
                ["", "cold", "warm"],
                [["plm-ray pretrain", start["cold"], start["warm"]]],
            ),
            flush=True,
        )
        scaling = run_scaling(store, shard, dtype == "bf16")
        print(
            table(
                f"3. Scaling: 1 CPU and batch 32 per worker ({precision}); the machine's ceiling beside it",
                ["", "1 worker / process", "2 at once", "efficiency"],
                [
                    ["plm-ray pretrain, ZeRO-2 both", scaling["1"], scaling["2"], f"{scaling['efficiency']:.1%}"],
                    [
                        "plm-ray pretrain, default (1 worker ZeRO-0)",
                        scaling["1_auto"],
                        scaling["2"],
                        f"{scaling['efficiency_auto']:.1%}",
                    ],
                    [
                        "plain loop (d) in independent processes",
                        scaling["plain_1"],
                        scaling["plain_2"],
                        f"{scaling['ceiling']:.1%}",
                    ],
                ],
            ),
            flush=True,
        )
        buckets = exchange(train["vocab"], dtype == "bf16")
        print(
            table(
                f"3b. ZeRO-2 gradient exchange at 2 ranks over gloo by reduce bucket ({precision}, 1 thread per "
                "rank, no Ray; the two engines step in alternation)",
                ["reduce bucket", "elements", "collectives per step", "step ms", "tokens/s"],
                [
                    [name, b["bucket_elements"], b["collectives_per_step"], b["step_ms"], b["tokens_per_second"]]
                    for name, b in buckets.items()
                ],
            ),
            flush=True,
        )
        zero = memory(train["vocab"])
        print(
            table(
                "4. Memory per rank at 2 ranks (weights fp32: fp32 and bf16-mixed; bf16: precision bf16, GPU default)",
                ["weights", "ZeRO stage", "model+optimizer state MiB", "vs ZeRO-0", "peak RSS MiB"],
                [
                    [w, s, z["state_bytes"] / MIB, z["state_bytes"] / stages["0"]["state_bytes"], z["peak_rss"] / MIB]
                    for w, stages in zero.items()
                    for s, z in stages.items()
                ],
            ),
            flush=True,
        )
        data = run_data(args.corpus, store / "bench-train" / "tokenizer")
    print(
        table(
            "2. Tokenize + pack into 128-token blocks (median of 2 runs; peak PSS of the process tree)",
            ["recipe", "shards", "tokens", "tokens/s", "peak PSS MiB"],
            [
                [k.rsplit("_", 1)[0], d["shards"], d["tokens"], d["tokens_per_second"], d["peak_pss"] / 2**20]
                for k, d in data.items()
            ],
        )
    )
    results = {
        "train_vs_hf_trainer": train["a"] / train["b"],
        "train_vs_hf_trainer_bf16": train["a"] / train["b16"],
        "train_peak_fraction": train["a"] * flops / peaks[dtype],
        "train_peak_fraction_fp32": train["a32"] * flops / peaks["fp32"],
        "data_vs_datasets_map": data["ray_all"]["tokens_per_second"] / data["datasets_all"]["tokens_per_second"],
        "data_rss_16_over_1": data["ray_all"]["peak_pss"] / data["ray_1"]["peak_pss"],
        "scaling_efficiency_2w": scaling["efficiency"],
        "scaling_efficiency_2w_vs_default_1w": scaling["efficiency_auto"],
        "scaling_ceiling_2proc": scaling["ceiling"],
        "exchange_cpu_bucket_over_hidden2": buckets["plm-ray CPU"]["tokens_per_second"]
        / buckets["hidden²"]["tokens_per_second"],
        "zero3_over_zero0_state": zero["bf16"]["3"]["state_bytes"] / zero["bf16"]["0"]["state_bytes"],
        "zero3_over_zero0_state_fp32": zero["fp32"]["3"]["state_bytes"] / zero["fp32"]["0"]["state_bytes"],
        "warm_start_seconds": start["warm"],
        "cold_start_seconds": start["cold"],
        "train_tokens_per_second": {k: train[k] for k in recipes},
        "train_a_b_runs": {"a": train["a_runs"], "b": train["b_runs"]},
        "train_step_ms_by_kind": {"fp32": train["d_profile"], "bf16": train["d16_profile"]},
        "train_precision": precision,
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()},
        "useful_mflop_per_token": flops / 1e6,
        "bench_seconds": time.time() - began,
    }
    args.out.write_text(json.dumps(results, indent=2))
    print("\n" + json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
