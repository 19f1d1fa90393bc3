"""Report: what a run measured, for people. `<run>/report/report.md` holds the pre-training
figures and, for every sweep of the run, a table of its trials; beside it `pretrain_loss.png` (the
loss curve) and `<sweep>_accuracy.png` (validation accuracy against learning rate, one curve per
epoch, the best trial marked). Written at the end of every command and by `plm-ray report RUN`."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from plm_ray.store import Store  # noqa: E402

FOLDER = "report"


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def loss_curve(history: list[dict[str, Any]], title: str) -> bytes:
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    held_out = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(*zip(*train, strict=True), label="training loss (per logged interval)", color="tab:blue")
    if held_out:
        axis.plot(*zip(*held_out, strict=True), "o-", label="held-out loss", color="tab:orange")
    for resume in (h for h in history if "resumed_from" in h):
        axis.axvline(resume["step"], color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel="optimizer step", ylabel="MLM loss (cross-entropy, nats)", title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    return _png(figure)


def accuracy_curve(sweep: dict[str, Any], title: str) -> bytes:
    """Accuracy against learning rate (log axis): one curve per epoch (its end-of-epoch evaluation),
    with several evaluations an epoch one more for each trial's best evaluation; the best trial starred."""
    trials = sorted((t for t in sweep["trials"] if t.get("history")), key=lambda t: t["learning_rate"])
    figure, axis = plt.subplots(figsize=(7, 4))
    evaluations = [(t, e) for t in trials for e in t["history"]]
    for epoch in sorted({e["epoch"] for _, e in evaluations if float(e["epoch"]).is_integer()}):
        points = [(t["learning_rate"], e["accuracy"]) for t, e in evaluations if e["epoch"] == epoch]
        axis.plot(*zip(*points, strict=True), "o-", label=f"epoch {epoch:g}", alpha=0.85)
    if any(not float(e["epoch"]).is_integer() for _, e in evaluations):
        points = [(t["learning_rate"], max(e["accuracy"] for e in t["history"])) for t in trials]
        axis.plot(*zip(*points, strict=True), "k^--", label="best evaluation of the trial", alpha=0.7)
    best = sweep["best"]
    axis.plot(best["learning_rate"], best["accuracy"], "*", markersize=18, color="gold", markeredgecolor="black")
    axis.annotate(
        f"best {best['accuracy']:.2%} at lr {best['learning_rate']:.1e}",
        (best["learning_rate"], best["accuracy"]),
        textcoords="offset points",
        xytext=(8, -16),
    )
    axis.set_xscale("log")
    axis.set(xlabel="learning rate", ylabel="validation accuracy", title=title)
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    return _png(figure)


def _pretrain_section(p: dict[str, Any]) -> list[str]:
    return [
        "## Pre-training",
        "",
        "| steps | tokens | tokens/s | training time | final loss | held-out loss | perplexity | masked accuracy |",
        "|---|---|---|---|---|---|---|---|",
        # training time sums every attempt of a resumed run (the last attempt's wall alone hid the rest);
        # results written before `train_seconds` existed have only the wall
        f"| {p['steps']:,} | {p['tokens']:,} | {p['tokens_per_second']:,.0f} "
        f"| {p['train_seconds'] / 60:.1f} min "
        f"| {p['final_loss']:.3f} | {p['eval_loss']:.3f} | {p['eval_perplexity']:.1f} | {p['eval_accuracy']:.1%} |",
        "",
        "![pre-training loss](pretrain_loss.png)",
        "",
    ]


def _sweep_section(name: str, sweep: dict[str, Any]) -> list[str]:
    best = sweep["best"]
    lines = [
        f"## Sweep `{name}`: {sweep.get('model', '')}",
        "",
        f"{len(sweep['trials'])} trials; best validation accuracy **{best['accuracy']:.2%}** "
        f"(macro-F1 {best['macro_f1']:.4f}) at learning rate {best['learning_rate']:.2e}, batch "
        f"{best['batch_size']}; best model: `{best['checkpoint']}`.",
        "",
        "| | learning rate | batch | epochs run | best epoch | accuracy | macro-F1 | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in sorted(sweep["trials"], key=lambda t: t["learning_rate"]):
        mark = "★" if t.get("checkpoint") == best["trial_checkpoint"] else ""
        lines.append(
            f"| {mark} | {t['learning_rate']:.2e} | {t['batch_size']} | {t.get('epochs_run', 0):g} "
            f"| {t.get('best_epoch', float('nan')):g} | {t.get('accuracy', float('nan')):.4f} "
            f"| {t.get('macro_f1', float('nan')):.4f} | {t['status']} |"
        )
    return [*lines, "", f"![{name}: accuracy against learning rate]({name}_accuracy.png)", ""]


def write_report(store: Store, run: str) -> str:
    """Write `<run>/report/` from what the run's stages stored; returns the report's location."""
    lines = [f"# Run `{run}`", ""]
    if store.exists(run, "pretrain", "result.json"):
        lines += _pretrain_section(store.read_json(run, "pretrain", "result.json"))
        history = store.read_json(run, "pretrain", "history.json")
        store.write_bytes(loss_curve(history, f"{run}: pre-training"), run, FOLDER, "pretrain_loss.png")
    sweeps = [name for name in store.list_dir(run) if store.exists(run, name, "results.json")]
    if sweeps:
        lines += ["## Sweeps", "", "| sweep | model | trials | best learning rate | best accuracy |", "|" + "---|" * 5]
    results = {}
    for name in sweeps:
        results[name] = store.read_json(run, name, "results.json")
        if store.exists(run, name, "result.json"):  # the model fine-tuned is recorded when the sweep completes
            results[name]["model"] = store.read_json(run, name, "result.json").get("model", "")
        best = results[name]["best"]
        lines.append(
            f"| `{name}` | {results[name].get('model', '')} | {len(results[name]['trials'])} "
            f"| {best['learning_rate']:.2e} | {best['accuracy']:.2%} |"
        )
    lines.append("")
    for name, sweep in results.items():
        lines += _sweep_section(name, sweep)
        store.write_bytes(accuracy_curve(sweep, f"{run} / {name}"), run, FOLDER, f"{name}_accuracy.png")
    store.write_bytes("\n".join(lines).encode(), run, FOLDER, "report.md")
    return store.uri(run, FOLDER, "report.md")
