"""Model cards: a README.md beside every export and best model (the Hugging Face convention): what the
model is, how it was trained, on what, with what results, and how to load it."""

from __future__ import annotations

from typing import Any

from plm_ray.config import Config

LOAD = """## How to load

```python
from transformers import {cls}, AutoTokenizer, pipeline

model = {cls}.from_pretrained("{where}")
tokenizer = AutoTokenizer.from_pretrained("{where}")
{task} = pipeline("{task_name}", model="{where}")
{task}("{example}", truncation=True)  # truncation: at the model's {positions} positions
```
"""


def _shape(config: Any, parameters: int) -> str:
    return (
        f"{config.model_type}, {parameters / 1e6:.1f} M parameters "
        f"({getattr(config, 'num_hidden_layers', getattr(config, 'n_layers', '?'))} layers, "
        f"hidden {getattr(config, 'hidden_size', getattr(config, 'emb_dim', '?'))}), "
        f"vocabulary {config.vocab_size:,}, {config.max_position_embeddings} positions"
    )


def pretrain_card(
    cfg: Config, run: str, final: dict[str, Any], model: Any, mask: str, where: str, positions: int
) -> str:
    """The card of a pre-training export at `where`."""
    config, parameters = model.config, sum(t.numel() for t in model.parameters())
    p, d = cfg.pretrain, cfg.data
    tokenizer = cfg.tokenizer.path or f"WordPiece, {cfg.tokenizer.vocab_size:,} tokens, trained on the corpus"
    rows = [
        ("architecture", _shape(config, parameters)),
        ("tokenizer", tokenizer),
        ("corpus", f"{d.corpus} (blocks of {d.block_size} tokens, {d.eval_fraction:g} held out)"),
        (
            "training",
            f"{final['step']:,} steps, {final['tokens']:,} tokens, {p.precision} precision, ZeRO-{final['zero_stage']}",
        ),
        ("masking", f"{cfg.masking.probability:g} of tokens{' (whole words)' if cfg.masking.whole_word else ''}"),
        ("final training loss", f"{final.get('loss', float('nan')):.4f}"),
        (
            "held-out loss / perplexity / accuracy",
            f"{final['eval_loss']:.4f} / {final['eval_perplexity']:.2f} / {final['eval_accuracy']:.1%}",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    load = LOAD.format(
        cls="AutoModelForMaskedLM",
        where=where,
        task="fill",
        task_name="fill-mask",
        example=f"the film was {mask} .",
        positions=positions,
    )
    return f"# {run}: a masked language model pre-trained with plm-ray\n\n| | |\n|---|---|\n{table}\n\n{load}"


def classifier_card(
    cfg: Config, run: str, results: dict[str, Any], pretrain: dict[str, Any] | None, where: str, positions: int
) -> str:
    """The card of a sweep's best model at `where`: the task, the sweep's table and its base."""
    s, best = cfg.sweep, results["best"]
    task = s.task + (f" (pairs: {s.text_column} + {s.text_pair_column})" if s.text_pair_column else "")
    base = results.get("model", s.model or "this run's pre-training export")
    lines = [
        f"# {run} / {s.name}: sequence classification fine-tuned with plm-ray",
        "",
        f"Fine-tuned from `{base}` on `{task}`. Best by validation {results['metric']}: "
        f"accuracy {best['accuracy']:.2%}, macro-F1 {best['macro_f1']:.4f}, loss {best['loss']:.4f} at learning "
        f"rate {best['learning_rate']:.2e}, batch {best['batch_size']}, warm-up {best['warmup_ratio']:g}, "
        f"weight decay {best['weight_decay']:g}.",
        "",
    ]
    if pretrain:
        lines += [
            f"Its pre-training: {pretrain['steps']:,} steps, {pretrain['tokens']:,} tokens, held-out MLM loss "
            f"{pretrain['eval_loss']:.4f}.",
            "",
        ]
    lines += [
        f"## The sweep ({s.search} search, {s.scheduler} scheduler)",
        "",
        "| learning rate | batch | warm-up | weight decay | accuracy | macro-F1 | loss | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in results["trials"]:
        scores = " | ".join(f"{t.get(k, float('nan')):.4f}" for k in ("accuracy", "macro_f1", "loss"))
        hparams = f"{t['learning_rate']:.2e} | {t['batch_size']} | {t['warmup_ratio']:g} | {t['weight_decay']:g}"
        lines.append(f"| {hparams} | {scores} | {t['status']} |")
    load = LOAD.format(
        cls="AutoModelForSequenceClassification",
        where=where,
        task="classify",
        task_name="text-classification",
        example="a moving story",
        positions=positions,
    )
    return "\n".join(lines) + "\n\n" + load
