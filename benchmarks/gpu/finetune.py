"""Fine-tuning on a shared GPU: plm-ray's sweep trials at a quarter of the GPU each against the HF
Trainer in as many processes sharing the GPU at once, the same model, rows, batch and length.

Run as a child (one HF process): python -m benchmarks.gpu.finetune MODEL_DIR TRAIN_TSV OUT_JSON"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.gpu.commands import child_env

BATCH, MAX_LENGTH, WARMUP_STEPS = 32, 66, 20


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()[1:] if "\t" in line]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def hf_finetune(model_dir: str, train_tsv: str) -> dict[str, float]:
    """HF Trainer fine-tuning (bf16=True, DataCollatorWithPadding): examples/s between the end of
    step WARMUP_STEPS and the end of training, the GPU synchronized at both ends."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts, labels = read_tsv(Path(train_tsv))
    encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
    rows = [{"input_ids": ids, "labels": y} for ids, y in zip(encoded["input_ids"], labels, strict=True)]
    marks: dict[str, float] = {}

    class Window(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == WARMUP_STEPS:
                torch.cuda.synchronize()
                marks["start"] = time.time()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize()
            marks["end"], marks["steps"] = time.time(), state.global_step

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            num_train_epochs=1,
            learning_rate=2e-5,
            warmup_steps=0.1,  # a fraction of the steps (transformers 5 dropped warmup_ratio)
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            bf16=True,
        )
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, attn_implementation="sdpa")
        collator = DataCollatorWithPadding(tokenizer)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Window()]).train()
    timed_steps = marks["steps"] - WARMUP_STEPS
    return {
        "examples_per_second": timed_steps * BATCH / (marks["end"] - marks["start"]),
        "window": [marks["start"], marks["end"]],
    }


def hf_processes(model_dir: Path, train_tsv: Path, n: int) -> list[dict[str, float]]:
    """`n` HF fine-tuning processes started at once on the one GPU (each a 1/n share, as n trials at
    gpus_per_trial 1/n are)."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"hf-{i}.json" for i in range(n)]
        args = [sys.executable, "-m", "benchmarks.gpu.finetune", str(model_dir), str(train_tsv)]
        procs = [
            subprocess.Popen(
                [*args, str(out)],
                cwd=ROOT,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for out in outs
        ]
        logs = [proc.communicate(timeout=600)[0] for proc in procs]
        if any(proc.returncode for proc in procs):
            raise RuntimeError("HF fine-tuning failed:\n" + "\n".join(log[-2000:] for log in logs))
        return [json.loads(out.read_text()) for out in outs]


def trial_rates(results: dict[str, Any]) -> list[float]:
    """Each trial's training examples/s over its last part of the epoch (the first holds its warm-up)."""
    return [t["history"][-1]["examples_per_second"] for t in results["trials"]]


if __name__ == "__main__":
    Path(sys.argv[3]).write_text(json.dumps(hf_finetune(sys.argv[1], sys.argv[2])))
