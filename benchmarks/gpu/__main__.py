"""`python -m benchmarks.gpu --data DIR --out DIR` (`make bench-gpu`): on one GPU, side by side in one
run, the bf16 matmul peak; plm-ray's `pretrain` command with the shipped GPU preset at one worker
(its start-up and its steady rate); the HF Trainer with run_mlm's collator; a plain PyTorch loop;
plm-ray's engine at ZeRO-0/2, with and without accumulation, in bf16 and bf16-mixed, with a kernel
profile; the GPU-only tests; then a 4-trial sweep at a quarter GPU each against 4 HF fine-tuning
processes. DIR holds `corpus/` (text shards) and `sst2/` (train.tsv, dev.tsv).

Writes OUT/bench-gpu-results.json (after every section, so a run cut short keeps what it measured),
the commands' time-stamped logs and the GPU's utilization samples; prints the tables last."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import ROOT, table, useful_flops_per_token
from benchmarks.gpu import commands, finetune, recipes
from benchmarks.gpu.monitor import GpuMonitor, bf16_peak_flops
from plm_ray.config import PRESETS, TokenizerSection, load_config
from plm_ray.data.packing import pack_documents
from plm_ray.data.tokenizer import train_wordpiece

VOCAB, SEQ = 32768, 128
SWEEP_TRIALS = 4


def corpus_lines(corpus: Path) -> list[str]:
    return [line.strip() for f in sorted(corpus.glob("*.txt")) for line in f.open(encoding="utf-8") if line.strip()]


def repeated_corpus(lines: list[str], folder: Path, copies: int) -> Path:
    """`copies` reshuffled copies of the lines, a file each: one epoch of the carried shards is too
    short for a steady window at 256 sequences a step."""
    folder.mkdir(parents=True)
    for copy in range(copies):
        order = np.random.default_rng(copy).permutation(len(lines))
        (folder / f"part-{copy}.txt").write_text("\n".join(lines[i] for i in order) + "\n")
    return folder


def packed(tokenizer: Any, lines: list[str], n_blocks: int) -> np.ndarray:
    """plm-ray's own tokenize + pack, without Ray: `n_blocks` [CLS] ... blocks of SEQ tokens."""
    special, json_tok, out = (tokenizer.cls_token_id, tokenizer.sep_token_id), tokenizer.backend_tokenizer.to_str(), []
    for start in range(0, len(lines), 20_000):  # only as many lines as the blocks need
        out.append(pack_documents(lines[start : start + 20_000], json_tok, special, SEQ, 0.0, 2048)["train"][0])
        if sum(len(b) for b in out) >= n_blocks:
            break
    return np.concatenate(out)[:n_blocks]


class Bench:
    """Runs sections in order, keeping each one's figures (or its error) and writing them all out
    after each, so a run cut short keeps what it measured. `only`: the sections to run (all if empty)."""

    def __init__(self, out: Path, only: set[str]):
        self.out, self.only, self.results, self.errors = out, only, {}, {}

    def section(self, name: str, measure: Callable[[], Any]) -> Any:
        if self.only and name not in self.only:
            return None
        started = time.time()
        print(f"[bench-gpu] {name} ...", flush=True)
        try:
            self.results[name] = measure()
        except Exception:  # noqa: BLE001 (a failed section is recorded and the others still run)
            self.errors[name] = traceback.format_exc()
            print(self.errors[name], flush=True)
        print(f"[bench-gpu] {name}: {time.time() - started:.1f} s", flush=True)
        self.write()
        return self.results.get(name)

    def write(self) -> None:
        raw = {"sections": self.results, "errors": self.errors}
        (self.out / "bench-gpu-raw.json").write_text(json.dumps(raw, indent=1, default=str))


def gpu_tests(log: Path) -> dict[str, Any]:
    """The GPU-only tests (`-m gpu`), skipped on machines without CUDA, run here."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        cwd=ROOT,
        env=commands.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log.write_text(done.stdout + done.stderr)
    return {"exit_code": done.returncode, "summary": (done.stdout.strip().splitlines() or [""])[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu-data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-gpu")
    parser.add_argument("--compile", action="store_true", help="also time the engine under pretrain.compile")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    only = {name for name in args.only.split(",") if name}
    bench = Bench(args.out, only | {"peak", "tokenizer"} if only else set())
    gpu = torch.cuda.get_device_name()
    print(f"# plm-ray GPU benchmarks\n{gpu}; torch {torch.__version__}; python {platform.python_version()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="plm-bench-gpu-"))
    store, corpus, sst2 = tmp / "store", args.data / "corpus", args.data / "sst2"
    with GpuMonitor(args.out / "gpu-util.csv") as monitor:
        peak = bench.section("peak", bf16_peak_flops)
        lines = corpus_lines(corpus)
        tokenizer = bench.section("tokenizer", lambda: train_wordpiece([lines], TokenizerSection(vocab_size=VOCAB)))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        blocks = packed(tokenizer, lines, recipes.BATCH * (recipes.WARMUP + recipes.TIMED + 8))
        sets = [
            f"data.corpus={repeated_corpus(lines, tmp / 'corpus', 4)}",
            f"tokenizer.path={tmp / 'tokenizer'}",
            "pretrain.num_workers=1",
            "pretrain.cpus_per_worker=8",
            "pretrain.log_every_steps=20",
        ]
        # the preset as shipped, once (a second run starts ~10 s sooner: BENCHMARKS.md); the precisions
        # are compared on the engine below, in one process
        warm = [*sets, "pretrain.max_steps=300"]
        bench.section(
            "plm_warm", lambda: commands.pretrain(store, "warm", warm, args.out / "plm-warm.log", monitor, 60)
        )
        cfg = load_config(commands.PRESET, ["pretrain.num_workers=1"])
        bench.section("hf_trainer", lambda: recipes.hf_trainer(cfg, tokenizer, blocks, monitor, 4))
        bench.section("plain", lambda: recipes.plain_loop(cfg, tokenizer, blocks, monitor))
        # after the HF Trainer: the engines' one-rank process group would make it think it was launched
        # distributed (children get an environment without the group's variables: commands.child_env)
        bench.section("engine", lambda: recipes.engine_variants(cfg, tokenizer, blocks, monitor))
        bench.section("gpu_tests", lambda: gpu_tests(args.out / "pytest-gpu.log"))
        sweep_sets = [
            f"sweep.task={sst2 / 'train.tsv'}",
            f"sweep.validation={sst2 / 'dev.tsv'}",
            "sweep.search=grid",
            "sweep.learning_rates=[1e-5, 2e-5, 3e-5, 5e-5]",
            f"sweep.gpus_per_trial={1 / SWEEP_TRIALS}",
            f"sweep.max_concurrent_trials={SWEEP_TRIALS}",
            "sweep.epochs=1",
            "sweep.evals_per_epoch=2",
        ]
        bench.section("sweep", lambda: commands.sweep(store, "warm", sweep_sets, args.out / "sweep.log"))
        export = store / "warm" / "pretrain" / "export"
        bench.section("hf_finetune", lambda: finetune.hf_processes(export, sst2 / "train.tsv", SWEEP_TRIALS))
        if args.compile:
            bench.section("engine_compiled", lambda: recipes.engine_compiled(cfg, tokenizer, blocks, monitor))
    layers, hidden, _, inter = PRESETS["base"]
    flops = useful_flops_per_token(layers, hidden, inter, VOCAB, SEQ, 0.15 * (SEQ - 1) / SEQ)
    summary = summarize(bench.results, peak or float("nan"), flops, gpu, time.time() - began)
    (args.out / "bench-gpu-results.json").write_text(json.dumps(summary, indent=2))
    print_tables(bench.results, summary, flops)
    print(json.dumps(summary, indent=2))
    if bench.errors:
        raise SystemExit(f"sections failed: {', '.join(bench.errors)}")


def summarize(r: dict[str, Any], peak: float, flops: float, gpu: str, seconds: float) -> dict[str, Any]:
    nan = float("nan")
    plm = r.get("plm_warm", {})
    hf = r.get("hf_trainer", {}).get("tokens_per_second", 0.0)
    engine = r.get("engine", {})
    step = {k: v["step_ms"] for k, v in engine.items() if k != "profile"}
    trials = finetune.trial_rates(r["sweep"]) if "sweep" in r else []
    hf_ft = [p["examples_per_second"] for p in r.get("hf_finetune", [])]
    return {
        "gpu": gpu,
        "plm_vs_hf_trainer": plm.get("tokens_per_second", nan) / hf if hf else nan,
        "plm_peak_fraction": plm.get("tokens_per_second", nan) * flops / peak,
        "gpu_busy_fraction": plm.get("gpu_busy", nan),
        "zero2_over_zero0": step.get("bf16-mixed_zero2_micro256", nan) / step.get("bf16-mixed_zero0_micro256", nan),
        "accum_over_single": step.get("bf16-mixed_zero0_micro128", nan) / step.get("bf16-mixed_zero0_micro256", nan),
        "bf16_over_bf16_mixed": step.get("bf16_zero0_micro256", nan) / step.get("bf16-mixed_zero0_micro256", nan),
        "startup_seconds": plm.get("startup_seconds", nan),
        "finetune_vs_hf_trainer": (sum(trials) / len(trials)) / (sum(hf_ft) / len(hf_ft)) if trials and hf_ft else nan,
        "sweep_trials_completed": sum(t.get("status") == "OK" for t in r.get("sweep", {}).get("trials", [])),
        "tokens_per_second": {k: r[k]["tokens_per_second"] for k in ("plm_warm", "hf_trainer", "plain") if k in r},
        "engine_step_ms": step,
        "profile": engine.get("profile", {}),
        "bf16_peak_tflops": peak / 1e12,
        "useful_mflop_per_token": flops / 1e6,
        "bench_seconds": seconds,
    }


def print_tables(r: dict[str, Any], s: dict[str, Any], flops: float) -> None:
    peak = s["bf16_peak_tflops"] * 1e12
    names = {
        "plm_warm": "plm-ray pretrain, GPU preset, 1 worker",
        "hf_trainer": "HF Trainer + run_mlm collator, bf16=True, dataloader_num_workers 4",
        "plain": "plain PyTorch loop: autocast bf16, fused AdamW, plm-ray masking + sparse head",
    }
    rows = [
        [
            name,
            r[k]["tokens_per_second"],
            f"{r[k]['tokens_per_second'] * flops / peak:.1%}",
            f"{r[k].get('gpu_busy', float('nan')):.0%}",
        ]
        for k, name in names.items()
        if k in r
    ]
    print(
        table(
            f"GPU pre-training: BERT-base, 256 x {SEQ}, vocab {VOCAB:,}; bf16 peak {s['bf16_peak_tflops']:.0f} TFLOP/s",
            ["recipe", "tokens/s", "of the peak", "GPU busy"],
            rows,
        )
    )
    print(
        table(
            "plm-ray's engine at one rank: ms per optimizer step of 256 sequences",
            ["variant", "ms"],
            [[k, v] for k, v in s["engine_step_ms"].items()],
        )
    )
    if "sweep" in r and "hf_finetune" in r:
        trials, hf = finetune.trial_rates(r["sweep"]), [p["examples_per_second"] for p in r["hf_finetune"]]
        print(
            table(
                f"Fine-tuning, {SWEEP_TRIALS} at once on the GPU: training examples/s of each",
                ["recipe", *[f"#{i}" for i in range(SWEEP_TRIALS)]],
                [["plm-ray sweep trial (1/4 GPU)", *trials], ["HF Trainer process (bf16=True)", *hf]],
            )
        )
    profile = s.get("profile", {})
    print(
        table(
            "Where a ZeRO-0 step's GPU time goes (torch.profiler, ms per step)",
            ["kind", "ms"],
            [[k, v] for k, v in profile.get("ms_per_step_by_kind", {}).items()],
        )
    )


if __name__ == "__main__":
    main()
