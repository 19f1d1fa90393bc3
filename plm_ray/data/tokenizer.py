"""Stage 2, tokenizer: load a Hugging Face fast tokenizer, or train WordPiece on a corpus sample.

The result is always saved as a Hugging Face tokenizer directory; that directory travels with every
checkpoint and export so no later stage can silently use another vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import ray.data
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from plm_ray.config import ConfigError, TokenizerSection

log = logging.getLogger(__name__)

SPECIAL = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def _sample(corpus: ray.data.Dataset, n_docs: int) -> Iterator[list[str]]:
    """Stream the first `n_docs` documents in batches; the driver never holds more than a batch."""
    for batch in corpus.limit(n_docs).iter_batches(batch_size=1000, batch_format="numpy"):
        yield [str(t) for t in batch["text"]]


def train_wordpiece(texts: Iterable[list[str]], cfg: TokenizerSection) -> PreTrainedTokenizerFast:
    """WordPiece trained on batches of documents."""
    tok = Tokenizer(models.WordPiece(unk_token=SPECIAL["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=list(SPECIAL.values())
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    log.info("trained WordPiece tokenizer: %d tokens", tok.get_vocab_size())
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1_000_000, **SPECIAL)


def load_tokenizer(location: str | Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer by HF name or local directory, checked for what MLM needs."""
    try:
        tok = AutoTokenizer.from_pretrained(str(location))
    except Exception as exc:  # OSError offline / not found, ValueError for broken files
        raise ConfigError(f"cannot load tokenizer {str(location)!r}: {str(exc).splitlines()[0]}") from exc
    if not tok.is_fast:
        raise ConfigError(f"tokenizer {str(location)!r} is not a fast tokenizer; plm-ray needs tokenizer.json")
    missing = [n for n in ("mask_token", "cls_token", "sep_token", "pad_token") if getattr(tok, n) is None]
    if missing:
        raise ConfigError(f"tokenizer {str(location)!r} lacks special tokens: {', '.join(missing)}")
    return tok


def prepare_tokenizer(cfg: TokenizerSection, corpus: ray.data.Dataset | None, out_dir: Path) -> PreTrainedTokenizerFast:
    """Load or train, then save into `out_dir` (uploaded to the store by the caller)."""
    if cfg.path:
        tok = load_tokenizer(cfg.path)
    elif corpus is None:
        raise ConfigError("tokenizer.path is empty and there is no corpus to train one on")
    else:
        tok = train_wordpiece(_sample(corpus, cfg.sample_documents), cfg)
    tok.save_pretrained(str(out_dir))
    return tok
