"""The TF-IDF + logistic-regression baseline that RESULTS.md puts beside every sweep."""

from __future__ import annotations

import numpy as np

from benchmarks.quality import C_GRID, tfidf_baseline
from plm_ray.data import embedded


def test_tfidf_baseline_learns_the_words_it_has_seen():
    pos, neg = embedded.POSITIVE, embedded.NEGATIVE
    texts = [f"the film was {w}" for w in pos + neg] * 5
    labels = np.array(([1] * len(pos) + [0] * len(neg)) * 5)
    rows = tfidf_baseline(texts, labels, [f"a {w} story" for w in pos + neg], np.array([1] * 20 + [0] * 20))
    assert [(r["ngrams"], r["C"]) for r in rows] == [(n, c) for n in ((1, 1), (1, 2)) for c in C_GRID]
    assert min(r["accuracy"] for r in rows) == 1.0
    unseen = tfidf_baseline(texts, labels, ["a story", "the film"], np.array([1, 0]))
    assert max(r["accuracy"] for r in unseen) <= 0.5  # no sentiment word: it can only guess
