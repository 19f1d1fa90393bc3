"""The embedded default data set: a small synthetic review language, generated deterministically.

It is built so that pre-training has something real to teach. Corpus documents keep one sentiment
throughout, so masked-language modelling must learn which adjectives go with "i loved it" and which
with "i hated it". The labeled task then shows adjectives alone, and its validation split uses
adjectives that never appear in the labeled training split: a randomly initialised model can only
guess on those, a pre-trained one knows them from the corpus.
"""

from __future__ import annotations

import random

from plm_ray.config import CACHE
from plm_ray.store import Store

POSITIVE = [
    "good",
    "great",
    "excellent",
    "wonderful",
    "superb",
    "delightful",
    "lovely",
    "brilliant",
    "fantastic",
    "pleasant",
    "charming",
    "splendid",
    "marvelous",
    "terrific",
    "amazing",
    "enjoyable",
    "outstanding",
    "perfect",
    "beautiful",
    "impressive",
]
NEGATIVE = [
    "bad",
    "awful",
    "terrible",
    "horrible",
    "dreadful",
    "poor",
    "lousy",
    "nasty",
    "boring",
    "dull",
    "mediocre",
    "disappointing",
    "unpleasant",
    "miserable",
    "clumsy",
    "inferior",
    "annoying",
    "tedious",
    "weak",
    "ugly",
]
# The labeled training split sees only the first LABELED_SEEN adjectives of each polarity.
LABELED_SEEN = 8

# Few fillers: the less of the corpus is random names and nouns, the sooner MLM gets to sentiment.
NOUNS = ["movie", "book", "meal", "hotel", "concert", "game", "song", "trip"]
NAMES = ["anna", "ben", "clara", "david", "emma", "leo"]
CITIES = ["paris", "tokyo", "lima", "oslo", "rome"]
CONTEXT = {
    1: ["i loved it", "everyone was happy", "it made my day", "highly recommended"],
    0: ["i hated it", "everyone was upset", "it ruined my day", "not recommended"],
}
OPINION = [
    "the {n} was {a} . {c} .",
    "{p} said the {n} was {a} and {b} .",
    "what a {a} {n} ! {c} .",
    "it was {a} , {c} .",
    "{a} and {b} . {c} .",
]
NEUTRAL = [
    "{p} went to {t} in {y} .",
    "the {n} was made in {t} .",
    "{p} bought a {n} last {d} .",
    "there is a {n} near the station in {t} .",
    "{p} and {q} talked about the {n} .",
]
LABELED = [
    "the {n} was {a} .",
    "{p} thought the {n} was rather {a} .",
    "a {a} {n} .",
    "my {n} turned out {a} .",
    "{p} found the {n} {a} .",
]
DAYS = ["monday", "tuesday", "friday", "sunday", "week", "month", "year"]


def _words(polarity: int) -> list[str]:
    return POSITIVE if polarity == 1 else NEGATIVE


def _fill(rng: random.Random, template: str, adjectives: list[str], polarity: int) -> str:
    return template.format(
        n=rng.choice(NOUNS),
        a=rng.choice(adjectives),
        b=rng.choice(adjectives),
        c=rng.choice(CONTEXT[polarity]),
        p=rng.choice(NAMES),
        q=rng.choice(NAMES),
        t=rng.choice(CITIES),
        y=rng.randint(1950, 2020),
        d=rng.choice(DAYS),
    )


def corpus_lines(n_docs: int = 12_000, seed: int = 0) -> list[str]:
    """One document per line; a document holds 2-5 sentences of one sentiment, or neutral facts."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_docs):
        if rng.random() < 0.1:
            sentences = [_fill(rng, rng.choice(NEUTRAL), POSITIVE, 1) for _ in range(rng.randint(2, 4))]
        else:
            polarity = rng.randint(0, 1)
            sentences = [_fill(rng, rng.choice(OPINION), _words(polarity), polarity) for _ in range(rng.randint(2, 5))]
        lines.append(" ".join(sentences))
    return lines


def task_rows(n: int, split: str, seed: int = 0) -> list[tuple[str, int]]:
    """(sentence, label) pairs. `train` uses the seen adjectives only; `dev` mixes seen and unseen."""
    rng = random.Random(f"{seed}-{split}")
    rows = []
    for i in range(n):
        polarity = i % 2
        words = _words(polarity)
        pool = words[:LABELED_SEEN] if split == "train" or rng.random() < 0.5 else words[LABELED_SEEN:]
        rows.append((_fill(rng, rng.choice(LABELED), pool, polarity), polarity))
    rng.shuffle(rows)
    return rows


def corpus_text(seed: int = 0) -> str:
    return "\n".join(corpus_lines(seed=seed)) + "\n"


def task_tsv(split: str, seed: int = 0) -> str:
    n = 1200 if split == "train" else 400
    return "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in task_rows(n, split, seed))


def files(seed: int = 0, shards: int = 4) -> dict[str, str]:
    """Relative path -> text. The corpus comes in shards, tokenized in parallel tasks as a real
    sharded corpus would be."""
    lines = corpus_lines(seed=seed)
    out = {f"corpus/part-{i}.txt": "\n".join(lines[i::shards]) + "\n" for i in range(shards)}
    out.update({"train.tsv": task_tsv("train", seed), "dev.tsv": task_tsv("dev", seed)})
    return out


def locations(store: Store, seed: int) -> dict[str, str]:
    """The embedded corpus and task in the store (`<root>/cache/embedded/seed-N/`, written once, so
    runs share them, and their tokenized cache), as locations workers on any node can read."""
    folder = (CACHE, "embedded", f"seed-{seed}")
    if not store.exists(*folder, "complete"):
        for name, text in files(seed).items():
            store.write_bytes(text.encode(), *folder, name)
        store.write_bytes(b"", *folder, "complete")
    return {
        key: store.uri(*folder, name)
        for key, name in (("corpus", "corpus"), ("train", "train.tsv"), ("dev", "dev.tsv"))
    }
