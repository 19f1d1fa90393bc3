"""The prepare stage: the corpus checked, the tokenizer loaded or trained (once per corpus), and the
tokenized shard cache found or built (data/cache.py). Pre-training reads the cache (data/stream.py).

The cache is built beside training when the cluster has CPUs the training workers do not reserve:
training then starts with the first chunk. Without a spare CPU (one worker holding every CPU of a
small machine) the cache is built first, with every CPU, since chunks that wait for a CPU the
training holds would never come.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plm_ray.config import ConfigError
from plm_ray.context import Context
from plm_ray.data import embedded
from plm_ray.data.cache import block_dtype, build, cache_key, folder
from plm_ray.data.corpus import Corpus, check_corpus
from plm_ray.data.stream import BlockSource
from plm_ray.data.tokenizer import corpus_tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What pre-training is handed: the cache to read, the held-out blocks, and the build if it runs on."""

    key: str
    cache: str  # the cache's location, for people
    eval_blocks: np.ndarray
    builder: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def train_blocks(self, ctx: Context) -> int:
        """Train blocks in the cache, once it is complete (waits for a build that runs on)."""
        self.join()
        return BlockSource(ctx.store, self.key, "train").available()

    def join(self) -> None:
        if self.builder:
            self.builder.join()
        if self.error:
            raise self.error[0]

    def stop_building(self) -> None:
        """At the end of the command: a build still running stops; the next run continues it."""
        if self.builder and self.builder.is_alive():
            self.stop.set()
            self.builder.join()
            print(
                f"[plm-ray] the tokenized cache {self.cache} is not complete yet; the next run continues it", flush=True
            )


@dataclass
class PrepareInputs:
    corpus: Corpus | None  # read and checked (None: the embedded one, written when the stage runs)
    tokenizer: Any  # `tokenizer.path`'s, loaded and checked (None: the run's own or one trained on the corpus)


class PrepareStage:
    name = "prepare"

    def folder(self, ctx: Context) -> str:
        return ""  # the cache lives outside the run; what the run needs of it goes with pre-training

    def done(self, ctx: Context) -> bool:
        """Only pre-training needs the cache: a run whose pre-training completed needs nothing here."""
        return bool(ctx.run) and ctx.store.exists(ctx.run, "pretrain", "result.json")

    def check(self, ctx: Context) -> PrepareInputs:
        """The corpus and `tokenizer.path`'s tokenizer, each read and checked once."""
        tokenizer = load_tokenizer(ctx.cfg.tokenizer.path) if ctx.cfg.tokenizer.path else None
        d = ctx.cfg.data
        return PrepareInputs(None if d.corpus == "embedded" else check_corpus(d, ctx.store, d.corpus), tokenizer)

    def check_cluster(self, ctx: Context, checked: Any) -> None:
        pass

    def run(self, ctx: Context, checked: PrepareInputs) -> dict[str, Any]:
        d, store = ctx.cfg.data, ctx.store
        corpus = checked.corpus or check_corpus(d, store, embedded.locations(store, ctx.cfg.run.seed)["corpus"])
        tokenizer = self._tokenizer(ctx, corpus, checked.tokenizer)
        info = {
            "json": tokenizer.backend_tokenizer.to_str(),
            "cls": tokenizer.cls_token_id,
            "sep": tokenizer.sep_token_id,
            "dtype": block_dtype(len(tokenizer)),
        }
        key = cache_key(corpus, info["json"], d)
        prepared = Prepared(key, store.uri(*folder(key)), np.empty((0, d.block_size), dtype=np.int64))
        spare = _spare_cpus(ctx)
        if store.exists(*folder(key), "index.json"):
            log.info("tokenized cache %s found", prepared.cache)
        elif spare >= 1 and "pretrain" in ctx.stages:
            prepared.builder = threading.Thread(
                target=_build, args=(ctx, key, corpus, info, spare, prepared), daemon=True
            )
            prepared.builder.start()
        else:
            import ray

            build(store, key, corpus, d, info, int(ray.cluster_resources().get("CPU", 1)))
        prepared.eval_blocks = self._eval_blocks(ctx, prepared)
        ctx.outputs["prepare"] = prepared
        train = BlockSource(store, key, "train")
        known = f"{train.available():,}" + ("" if train.complete else " so far, streaming")
        print(f"[plm-ray] tokenized cache {prepared.cache}: {known} train blocks of {d.block_size} tokens", flush=True)
        return {"cache": prepared.cache, "eval_blocks": len(prepared.eval_blocks)}

    def _tokenizer(self, ctx: Context, corpus: Corpus, given: Any) -> Any:
        """The run's own tokenizer when it has one (a resume), else `tokenizer.path`'s (`given`), else
        the one trained on the corpus; kept in the run."""
        import tempfile

        store, run = ctx.store, ctx.run
        with tempfile.TemporaryDirectory() as tmp:
            if run and store.exists(run, "tokenizer"):
                return load_tokenizer(store.download_dir(tmp, run, "tokenizer"))
            tokenizer = given or corpus_tokenizer(ctx.cfg.tokenizer, corpus, store)
            if run:
                tokenizer.save_pretrained(tmp)
                store.upload_dir(tmp, run, "tokenizer")
            return tokenizer

    def _eval_blocks(self, ctx: Context, prepared: Prepared) -> np.ndarray:
        """The first `eval_blocks` held-out blocks (waiting for the chunks that hold them)."""
        d, workers = ctx.cfg.data, ctx.cfg.pretrain.num_workers
        source = BlockSource(ctx.store, prepared.key, "eval")
        blocks = source.read(0, min(d.eval_blocks, source.wait_until(d.eval_blocks)))
        if "pretrain" in ctx.stages and len(blocks) < workers:
            prepared.stop_building()
            raise ConfigError(
                f"held-out split of {d.corpus} has {len(blocks)} block(s), fewer than "
                f"{workers} workers; raise data.eval_fraction"
            )
        return blocks


def _spare_cpus(ctx: Context) -> int:
    """CPUs of the cluster the pre-training workers of this command do not reserve."""
    import ray

    p = ctx.cfg.pretrain
    reserved = p.num_workers * p.cpus_per_worker if "pretrain" in ctx.stages else 0
    return int(ray.cluster_resources().get("CPU", 0)) - reserved


def _build(ctx: Context, key: str, corpus: Corpus, info: dict[str, Any], tasks: int, prepared: Prepared) -> None:
    """The build beside training (a thread of the driver, which only drives Ray Data's tasks)."""
    try:
        build(ctx.store, key, corpus, ctx.cfg.data, info, tasks, prepared.stop)
    except BaseException as exc:  # noqa: BLE001 (re-raised by Prepared.join; failed.json stops the readers)
        prepared.error.append(exc)
