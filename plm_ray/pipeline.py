"""The pipeline: a command is a list of stages (context.py), run in order.

    execute: name the run -> every stage's check (nothing started, nothing written) -> Ray, once ->
             every stage's cluster check -> the run's config -> each stage's run -> summary + report

Each stage writes `<run>/<stage>/result.json` last, so its presence means the stage completed;
`summary.json` is written after the stages a command ran, so a reader never sees a half-run. A typo
in a command never costs the run it names: --overwrite deletes only after every check passed. A
stage that did not complete continues where it stopped when the same run is started again:
pre-training from its newest complete checkpoint, a sweep through `Tuner.restore`."""

from __future__ import annotations

import time
from typing import Any

import yaml

from plm_ray import tracking
from plm_ray.cluster import ensure_ray
from plm_ray.config import Config, ConfigError
from plm_ray.context import Context, Stage
from plm_ray.data.stage import PrepareStage
from plm_ray.monitor import Monitor, Stalled
from plm_ray.pretrain.stage import PretrainStage
from plm_ray.store import Store
from plm_ray.sweep.stage import SweepStage

STAGES: dict[str, Stage] = {"prepare": PrepareStage(), "pretrain": PretrainStage(), "sweep": SweepStage()}
COMMANDS = {
    "run": ("prepare", "pretrain", "sweep"),
    "pretrain": ("prepare", "pretrain"),
    "sweep": ("sweep",),
    "prepare": ("prepare",),
}


def execute(
    command: str,
    cfg: Config,
    resume: bool = False,
    overwrite: bool = False,
    began: float | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run a command's stages; its summary (also `<run>/summary.json`; for `prepare`, the cache)."""
    store = Store(cfg.store)
    store.check_access()
    cfg.store.root = store.root_uri  # workers and trials run in other directories
    tracking.resolve(cfg)
    names = COMMANDS[command]
    run = "" if command == "prepare" else cfg.run.name or time.strftime("run-%Y%m%d-%H%M%S")
    cfg.run.name = run or cfg.run.name
    ctx = Context(cfg, store, run, began or time.time(), names, resume, overwrite, verbose)
    stages = [STAGES[name] for name in names]
    todo = _to_run(ctx, stages)
    checked = {stage.name: stage.check(ctx) for stage in todo}
    ensure_ray(verbose=verbose)
    for stage in todo:
        stage.check_cluster(ctx, checked[stage.name])
    if ctx.run:
        _start_run(ctx)
    with Monitor(cfg, extra=lambda: _building(ctx)) as monitor:
        ctx.progress = monitor.progress
        try:
            _run_stages(ctx, stages, todo, checked, monitor)
        except BaseException:
            if monitor.halted:  # whatever the interrupted stage raised on its way out
                raise Stalled(monitor.stalled) from None
            raise
        finally:
            prepared = ctx.outputs.get("prepare")
            if prepared:
                prepared.stop_building()
    return finish(ctx) if ctx.run else {"prepare": ctx.outputs["prepare"].cache}


def _run_stages(
    ctx: Context, stages: list[Stage], todo: list[Stage], checked: dict[str, Any], monitor: Monitor
) -> None:
    for stage in stages:
        if stage not in todo:
            if stage.folder(ctx):
                print(f"[plm-ray] {stage.name} already complete for {ctx.run}; reusing it", flush=True)
            continue
        result = stage.run(ctx, checked[stage.name])
        if monitor.halted:  # a stage stopped for a stall returns what it had: not a complete result
            raise Stalled(monitor.stalled)
        if stage.folder(ctx):
            ctx.store.write_json(result, ctx.run, stage.folder(ctx), "result.json")


def _building(ctx: Context) -> str:
    """What a stalled command may be waiting for beside resources: the tokenized cache's build."""
    prepared = ctx.outputs.get("prepare")
    if prepared and prepared.builder and prepared.builder.is_alive():
        return f"the tokenized cache being built ({prepared.cache})"
    return ""


def _to_run(ctx: Context, stages: list[Stage]) -> list[Stage]:
    """The stages still to run; a completed one is refused unless --resume (skip it) or --overwrite."""
    if not ctx.run:
        return stages
    done = [stage for stage in stages if stage.done(ctx)]
    shown = [stage.folder(ctx) for stage in done if stage.folder(ctx)]
    if shown and not (ctx.resume or ctx.overwrite):
        raise ConfigError(
            f"run {ctx.run!r} already completed {', '.join(shown)} in {ctx.store.uri(ctx.run)}; "
            "pass --resume to continue it or --overwrite to replace it"
        )
    return stages if ctx.overwrite else [stage for stage in stages if stage not in done]


def _start_run(ctx: Context) -> None:
    """Every check passed: only now replace what --overwrite replaces (the whole run for
    pre-training, else the sweep), and record the configuration."""
    store, run = ctx.store, ctx.run
    if ctx.overwrite:
        store.delete(run) if "pretrain" in ctx.stages else store.delete(run, ctx.cfg.sweep.name)
    store.write_bytes(yaml.safe_dump(ctx.cfg.to_dict(), sort_keys=False).encode(), run, "config.yaml")
    print(f"[plm-ray] run {run} in {store.uri(run)}", flush=True)


def finish(ctx: Context) -> dict[str, Any]:
    """The end of every command: `summary.json` of the stages completed so far, and the run's report."""
    from plm_ray.report import write_report

    store, run = ctx.store, ctx.run
    summary: dict[str, Any] = {"run": run, "store": store.uri(run), "config": store.uri(run, "config.yaml")}
    if store.exists(run, "pretrain", "result.json"):
        summary["pretrain"] = store.read_json(run, "pretrain", "result.json")
    if store.exists(run, ctx.cfg.sweep.name, "result.json"):
        summary["sweep"] = store.read_json(run, ctx.cfg.sweep.name, "result.json")
    summary["report"] = write_report(store, run)
    store.write_json(summary, run, "summary.json")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    if "run" not in summary:
        return f"tokenized cache: {summary['prepare']}"
    lines = [f"run {summary['run']}  ({summary['store']})"]
    if "pretrain" in summary:
        p = summary["pretrain"]
        lines.append(
            f"pretrain: {p['steps']} steps (stopped by {p['stopped_by']}), {p['tokens']:,} tokens, "
            f"{p['tokens_per_second']:,.0f} tok/s, final loss {p['final_loss']:.3f}, eval loss {p['eval_loss']:.3f}, "
            f"start-up {p['startup_seconds']:.0f}s, export {p['export']}"
        )
    if "sweep" in summary:
        s = summary["sweep"]
        lines.append(f"{'learning_rate':>14} {'batch':>6} {'epochs':>6} {'accuracy':>9} {'macro_f1':>9}")
        for t in s["trials"]:
            mark = " *" if t.get("checkpoint") == s["best"]["trial_checkpoint"] else ""
            lines.append(
                f"{t['learning_rate']:>14.2e} {t['batch_size']:>6} {t.get('epochs_run', 0):>6g} "
                f"{t.get('accuracy', float('nan')):>9.4f} {t.get('macro_f1', float('nan')):>9.4f}{mark}"
            )
        b = s["best"]
        lines.append(f"best: learning_rate {b['learning_rate']:.2e}, accuracy {b['accuracy']:.4f} -> {b['checkpoint']}")
    lines.append(f"report: {summary['report']}")
    lines.append(f"curves: tensorboard --logdir {summary['store']}")
    lines.append(f"logs: {summary['store']}/logs")
    return "\n".join(lines)
