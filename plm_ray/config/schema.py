"""Every key a user can write: one dataclass section per stage, each key with its default, its
meaning and its rule. The configuration reference (`plm-ray config --reference`, the README's
table) is generated from here, and checks.py refuses what a rule does not allow."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from plm_ray.config.rules import (
    Rule,
    above,
    at_least,
    below,
    each,
    endpoint,
    folder_name,
    one_of,
    within,
)
from plm_ray.model.archs import ARCHS

# (layers, hidden, heads, intermediate); tiny..small follow Turc et al. 2019, base/large follow BERT.
PRESETS = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}
# auto | fp32 | bf16-mixed (autocast over fp32 weights) | bf16 (bf16 weights) | fp16 (hardware.py)
PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16", "fp16")


def key(default: Any, doc: str, rule: Rule | None = None) -> Any:
    """A config key: its default, what it means (the reference's text) and what it must be."""
    meta = {"doc": doc, "rule": rule}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE_INT = at_least(1)
COUNT = at_least(0)
NOT_EMPTY = Rule(bool, "must be non-empty")


@dataclass
class RunSection:
    name: str = key("", "the run's folder in the store", folder_name(optional=True))
    seed: int = key(0, "seeds the weights, masks, dropout and data order", COUNT)
    stall_minutes: float = key(10.0, "say what the command waits for after this long without progress; 0: never", COUNT)
    exit_on_stall: bool = key(False, "exit with an error (code 3) when stalled, instead of only saying so")


@dataclass
class StoreSection:
    root: str = key("./plm_store", "local path or any pyarrow URI (s3://bucket/prefix, gs://...)")
    endpoint: str = key("", "S3-compatible endpoint, e.g. http://127.0.0.1:9000", endpoint())
    region: str = key("", "S3 region")


@dataclass
class DataSection:
    corpus: str = key("embedded", "embedded, a file, directory, glob or URI, or hf:NAME")
    format: str = key(
        "auto",
        "auto (from the extensions), text, jsonl, parquet, csv or tsv",
        one_of("auto", "text", "jsonl", "parquet", "csv", "tsv"),
    )
    text_column: str = key("text", "the text column of jsonl / parquet / csv / tsv corpora", NOT_EMPTY)
    documents: str = key(
        "line", "text files: a document a line, or blank_line (paragraphs)", one_of("line", "blank_line")
    )
    hf_config: str = key("", "hf: corpora: the dataset's configuration")
    hf_split: str = key("train", "hf: corpora: the split")
    block_size: int = key(64, "tokens per packed block, [CLS] included", at_least(8))
    eval_fraction: float = key(
        0.01, "documents held out (by content hash)", within(0, 0.5, open_low=True, open_high=True)
    )
    eval_blocks: int = key(256, "held-out blocks each evaluation uses", POSITIVE_INT)
    tokenize_batch_docs: int = key(2048, "documents per tokenizer call", POSITIVE_INT)
    chunk_mb: float = key(64.0, "MiB of a text or JSON Lines file one task tokenizes into one cache shard", above(0))
    shuffle_buffer_blocks: int = key(
        0, "blocks permuted together in each window, anew each epoch; 0: corpus order", COUNT
    )


@dataclass
class TokenizerSection:
    path: str = key("", "a Hugging Face tokenizer (name or directory); empty: train WordPiece on the corpus")
    vocab_size: int = key(8192, "WordPiece vocabulary size", within(64, 2**24))
    sample_documents: int = key(200_000, "documents the WordPiece is trained on", POSITIVE_INT)
    min_frequency: int = key(2, "WordPiece: fewest occurrences of a merge", POSITIVE_INT)
    lowercase: bool = key(True, "WordPiece: lowercase the text")


@dataclass
class MaskingSection:
    probability: float = key(
        0.15, "tokens (or words) selected for prediction", within(0, 1, open_low=True, open_high=True)
    )
    whole_word: bool = key(False, "select whole words (WordPiece ## pieces go with their word)")
    mask_fraction: float = key(0.8, "of the selected: replaced by [MASK]", within(0, 1))
    random_fraction: float = key(0.1, "of the selected: replaced by a random token (the rest stay)", within(0, 1))


@dataclass
class ModelSection:
    arch: str = key(
        "bert", "bert, roberta, xlm (only the tied decoder as MLM head) or convbert (convolution heads)", one_of(*ARCHS)
    )
    preset: str = key("tiny", "size: tiny, mini, small, medium, base, large", one_of(*PRESETS))
    init_from: str = key("", "an MLM checkpoint (path, URI or hub name) to continue pre-training")
    num_layers: int = key(0, "layers; 0: the preset's", COUNT)
    hidden_size: int = key(0, "hidden size; 0: the preset's", COUNT)
    num_heads: int = key(0, "attention heads, dividing hidden_size; 0: the preset's", COUNT)
    intermediate_size: int = key(0, "feed-forward width; 0: the preset's", COUNT)
    max_positions: int = key(0, "position embeddings; 0: data.block_size", COUNT)
    dropout: float = key(-1.0, "hidden and attention dropout; negative: the preset's 0.1", below(1))
    attention: str = key("auto", "auto (SDPA on GPUs, eager on CPUs), sdpa or eager", one_of("auto", "sdpa", "eager"))


@dataclass
class PretrainSection:
    num_workers: int = key(2, "Ray Train workers (one GPU each with use_gpu)", POSITIVE_INT)
    use_gpu: bool = key(False, "a GPU per worker, NCCL; else CPU workers over gloo")
    cpus_per_worker: int = key(1, "CPUs each worker reserves (its torch threads on CPU)", POSITIVE_INT)
    placement_strategy: str = key(
        "PACK",
        "PACK, SPREAD, STRICT_SPREAD (one worker per node) or STRICT_PACK",
        one_of("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"),
    )
    zero_stage: int = key(-1, "ZeRO stage 0-3; -1 (auto): 2 on several workers, 0 on one", within(-1, 3))
    offload: bool = key(False, "ZeRO-Offload: optimizer state on the CPU (stages 1-3)")
    precision: str = key("auto", "auto, fp32, bf16-mixed (autocast), bf16 (bf16 weights) or fp16", one_of(*PRECISIONS))
    batch_size: int = key(32, "micro-batch per worker, in blocks", POSITIVE_INT)
    grad_accum: int = key(1, "micro-batches per optimizer step", POSITIVE_INT)
    learning_rate: float = key(1e-3, "peak learning rate", above(0))
    weight_decay: float = key(0.01, "AdamW weight decay (not on biases and LayerNorm)", COUNT)
    warmup_steps: int = key(50, "linear warm-up steps", COUNT)
    schedule: str = key("linear", "decay after warm-up: linear or cosine", one_of("linear", "cosine"))
    max_steps: int = key(1000, "optimizer steps; 0: run `epochs` epochs", COUNT)
    epochs: int = key(1, "epochs when max_steps is 0", COUNT)
    budget_minutes: float = key(0.0, "a training-time budget (minutes); 0: none", COUNT)
    grad_clip: float = key(1.0, "gradient-norm clipping; 0: none", COUNT)
    log_every_steps: int = key(50, "steps between progress lines", POSITIVE_INT)
    eval_every_steps: int = key(0, "steps between held-out evaluations; 0: at the end", COUNT)
    checkpoint_every_steps: int = key(0, "steps between checkpoints; 0: at the end", COUNT)
    keep_checkpoints: int = key(2, "checkpoints kept in the store", POSITIVE_INT)
    max_failures: int = key(0, "worker-group restarts after a failure", COUNT)
    comm_timeout_s: int = key(600, "seconds a collective may hang before it raises", POSITIVE_INT)
    compile: bool = key(False, "torch.compile the model through DeepSpeed (BENCHMARKS.md before enabling)")
    deepspeed: str = key("", 'a DeepSpeed JSON merged over the generated config; "auto" values are filled in')


def resolve_zero_stage(requested: int, world: int, offload: bool) -> int:
    """-1 (auto): ZeRO-2 across several ranks. One rank has nothing to partition, and there stage 2's
    gradient buckets and partition copies cost a good part of a step (BENCHMARKS.md), so stage 0,
    unless optimizer offload is on, which needs a ZeRO stage. An explicit stage is used as given."""
    if requested >= 0:
        return requested
    return 2 if world > 1 or offload else 0


@dataclass
class OptimizerSection:
    betas: list[float] = key(
        [0.9, 0.98], "AdamW betas, pre-training and every trial", each(within(0, 1, open_high=True), count=2)
    )
    eps: float = key(1e-6, "AdamW epsilon", above(0))


@dataclass
class TrackingSection:
    mlflow_uri: str = key("", "MLflow tracking URI or folder; empty: off")
    wandb_project: str = key("", "Weights & Biases project; empty: off (WANDB_MODE=offline works offline)")


@dataclass
class SweepSection:
    task: str = key("embedded", "labeled data: csv, tsv, jsonl, parquet (path or URI), or hf:NAME")
    validation: str = key("", "validation rows (path, URI or hf: split); empty: hold out validation_fraction")
    validation_fraction: float = key(
        0.1, "rows held out (by content hash) when there is no validation", within(0, 1, open_low=True, open_high=True)
    )
    format: str = key("auto", "auto, csv, tsv, jsonl or parquet", one_of("auto", "csv", "tsv", "jsonl", "parquet"))
    text_column: str = key("sentence", "the text column", NOT_EMPTY)
    text_pair_column: str = key("", "a second text column for sentence pairs (MRPC, RTE, QNLI); empty: single texts")
    label_column: str = key("label", "the label column", NOT_EMPTY)
    label_map: bool = key(False, "map string labels to ids (sorted); the map travels with the model")
    num_labels: int = key(
        0, "classes; 0: the largest label + 1", Rule(lambda v: v == 0 or v >= 2, "must be 0 (infer) or >= 2")
    )
    hf_config: str = key("", "hf: tasks: the dataset's configuration")
    name: str = key("sweep", "the sweep's folder in the run", folder_name(optional=False))
    model: str = key("", "checkpoint to fine-tune; empty: this run's export; random: no pre-training")
    search: str = key(
        "grid",
        "grid, random, optuna or hyperopt (Ray Tune's searchers)",
        one_of("grid", "random", "optuna", "hyperopt"),
    )
    scheduler: str = key(
        "asha", "asha (early stopping), pbt (population-based training) or none", one_of("asha", "pbt", "none")
    )
    metric: str = key(
        "accuracy",
        "what the search optimizes: accuracy, macro_f1 or loss (validation)",
        one_of("accuracy", "macro_f1", "loss"),
    )
    num_samples: int = key(4, "trials of a random, optuna or hyperopt search", POSITIVE_INT)
    learning_rates: list[float] = key([1e-4, 3e-4, 1e-3, 3e-3], "grid: the learning rates", each(above(0)))
    lr_min: float = key(1e-5, "random / optuna / hyperopt: log-uniform learning rates from lr_min", above(0))
    lr_max: float = key(1e-3, "... to lr_max", above(0))
    batch_sizes: list[int] = key([32], "batch sizes searched", each(at_least(1)))
    warmup_ratios: list[float] = key([0.1], "warm-up ratios searched", each(within(0, 1, open_high=True)))
    weight_decays: list[float] = key([0.01], "weight decays searched", each(at_least(0)))
    epochs: list[int] = key([3], "epochs searched (the schedulers' horizon is the largest)", each(at_least(1)))
    evals_per_epoch: int = key(1, "validation + checkpoint points per epoch; each trial keeps its best", POSITIVE_INT)
    max_length: int = key(128, "tokens per example (longer ones are truncated)", at_least(8))
    dropout: float = key(-1.0, "fine-tuning dropout; negative: the checkpoint's own", below(1))
    zero_stage: int = key(0, "ZeRO stage of each trial's engine", within(0, 3))
    precision: str = key("auto", "as pretrain.precision", one_of(*PRECISIONS))
    max_concurrent_trials: int = key(2, "trials at once", POSITIVE_INT)
    cpus_per_trial: int = key(1, "CPUs each trial reserves", POSITIVE_INT)
    gpus_per_trial: float = key(0.0, "GPUs each trial reserves (fractions share a GPU); 0: CPU", COUNT)
    grace_period: int = key(1, "ASHA: epochs before a trial may be stopped", POSITIVE_INT)
    deepspeed: str = key("", "a DeepSpeed JSON merged over each trial's generated config")


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    store: StoreSection = field(default_factory=StoreSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
