"""Tokenizer: load a Hugging Face fast tokenizer, or train WordPiece on a corpus sample.

The result is always saved as a Hugging Face tokenizer directory; that directory travels with every
checkpoint and export so no later stage can silently use another vocabulary. A trained WordPiece is
kept in the store (`<root>/cache/tokenizers/<key>/`, keyed by the corpus and the tokenizer settings)
and reused by later runs of the same corpus: the trainer breaks ties between equally frequent merges
in hash order, so a second training could differ in a few tokens, and the tokenized cache with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from plm_ray.config import CACHE, ConfigError, TokenizerSection
from plm_ray.data.corpus import Corpus, sample_documents
from plm_ray.store import Store

log = logging.getLogger(__name__)

SPECIAL = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_wordpiece(texts: Iterable[list[str]], cfg: TokenizerSection) -> PreTrainedTokenizerFast:
    """WordPiece trained on batches of documents."""
    tok = Tokenizer(models.WordPiece(unk_token=SPECIAL["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL.values()),
        show_progress=False,  # its bars are blank lines on a console that is not a terminal
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


def cached_folder(corpus: Corpus, cfg: TokenizerSection) -> tuple[str, ...]:
    settings = {"corpus": corpus.fingerprint(), "tokenizer": asdict(cfg)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    return (CACHE, "tokenizers", key)


def corpus_tokenizer(cfg: TokenizerSection, corpus: Corpus, store: Store) -> PreTrainedTokenizerFast:
    """The WordPiece trained on this corpus with these settings: from the store's cache, else
    trained on the corpus's first `sample_documents` documents and cached."""
    cached = cached_folder(corpus, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        if store.exists(*cached, "complete"):
            return load_tokenizer(store.download_dir(tmp, *cached))
        tokenizer = train_wordpiece(sample_documents(corpus, store, cfg.sample_documents), cfg)
        tokenizer.save_pretrained(tmp)
        store.upload_dir(tmp, *cached)
        store.write_bytes(b"", *cached, "complete")  # last: the folder holds the whole tokenizer
        return tokenizer
