"""Model quality on SST-2: the TF-IDF + logistic-regression baseline computed here, on the very rows
plm-ray's sweep trains and validates on (read by the same `read_labeled`), beside the best accuracy
of every sweep a run holds and the published reference points.

    python -m benchmarks.quality [--sst2 DIR] [--store ROOT --run NAME ...]

Prints a Markdown table; `--out FILE` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from benchmarks.common import ROOT
from plm_ray.config import StoreSection, SweepSection
from plm_ray.data.labeled import read_labeled
from plm_ray.store import Store

# SST-2 dev (GLUE test for the small BERTs), as the issue and FIELD-NOTES give them.
REFERENCES = [
    ("Google BERT-Tiny (2L/128H, 3.3 B words), GLUE test", 0.832),
    ("Google BERT-Mini (4L/256H), GLUE test", 0.859),
    ("Google BERT-Small (4L/512H), GLUE test", 0.897),
    ("BERT-base, dev", 0.927),
]
C_GRID = (1.0, 4.0, 16.0)


def tfidf_baseline(texts: list[str], labels: np.ndarray, v_texts: list[str], v_labels: np.ndarray) -> list[dict]:
    """Accuracy of TF-IDF (sublinear tf) + logistic regression, unigrams and uni+bigrams, per C."""
    rows = []
    for ngrams in ((1, 1), (1, 2)):
        vectorizer = TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True, min_df=1)
        train, valid = vectorizer.fit_transform(texts), vectorizer.transform(v_texts)
        for c in C_GRID:
            started = time.perf_counter()
            model = LogisticRegression(C=c, max_iter=2000).fit(train, labels)
            accuracy = float((model.predict(valid) == v_labels).mean())
            rows.append({"ngrams": ngrams, "C": c, "accuracy": accuracy, "seconds": time.perf_counter() - started})
    return rows


def sweeps_of(store: Store, run: str) -> list[dict[str, Any]]:
    """The best trial of every completed sweep in the run, with the sweep's wall time."""
    found = []
    for name in store.list_dir(run):
        if store.exists(run, name, "result.json") and name != "pretrain":
            result = store.read_json(run, name, "result.json")
            found.append(
                {
                    "run": run,
                    "sweep": name,
                    "model": result["model"],
                    "accuracy": result["best"]["accuracy"],
                    "learning_rate": result["best"]["learning_rate"],
                    "trials": len(result["trials"]),
                    "wall_seconds": result.get("wall_seconds", float("nan")),
                }
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality")
    parser.add_argument("--sst2", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--store", default=str(ROOT / "plm_store"), help="store holding the runs to list")
    parser.add_argument("--run", action="append", default=[], help="run whose sweeps go into the table")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    train, dev = args.sst2 / "train.tsv", args.sst2 / "dev.tsv"
    if not train.is_file() or not dev.is_file():
        raise SystemExit(f"SST-2 not found: {train}, {dev} (pass --sst2 DIR with train.tsv and dev.tsv)")
    store = Store(StoreSection(root=args.store))
    data = read_labeled(SweepSection(), store, str(train), str(dev))
    texts, labels = data["train"].texts, data["train"].labels
    v_texts, v_labels = data["validation"].texts, data["validation"].labels
    baseline = tfidf_baseline(texts, labels, v_texts, v_labels)
    sweeps = [s for run in args.run for s in sweeps_of(store, run)]

    print(f"\n## SST-2 dev accuracy ({len(texts):,} train / {len(v_texts):,} dev rows)\n")
    print("| model | accuracy | note |\n|---|---|---|")
    for s in sweeps:
        note = f"{s['trials']} trials, best lr {s['learning_rate']:.1e}, sweep {s['wall_seconds'] / 60:.0f} min"
        print(f"| plm-ray `{s['run']}/{s['sweep']}`: {s['model']} | {s['accuracy']:.2%} | {note} |")
    for b in baseline:
        name = "unigrams" if b["ngrams"] == (1, 1) else "uni+bigrams"
        print(f"| TF-IDF + logistic regression, {name}, C={b['C']:g} | {b['accuracy']:.2%} | computed here |")
    for name, accuracy in REFERENCES:
        print(f"| {name} | {accuracy:.1%} | published |")
    if args.out:
        args.out.write_text(json.dumps({"tfidf": baseline, "sweeps": sweeps}, indent=2))


if __name__ == "__main__":
    main()
