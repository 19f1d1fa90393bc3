"""Faults survived, each on real Ray Train / Tune / DeepSpeed (CPU): a worker SIGKILLed mid-training,
the driver SIGKILLed, a sweep driver SIGKILLed, half-written checkpoints, and a 16-trial sweep."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from plm_ray import pipeline
from plm_ray.config import ConfigError, load_config
from plm_ray.pretrain import checkpoints
from plm_ray.store import Store

from .conftest import SMALL, small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
# Long enough for a kill to land between two checkpoints; every step logged, fp32 for exact losses.
RESUMABLE = [
    "pretrain.max_steps=30",
    "pretrain.checkpoint_every_steps=5",
    "pretrain.keep_checkpoints=3",
    "pretrain.precision=fp32",
    "pretrain.max_failures=1",
]


def _trajectory(root: Path, run: str) -> dict[int, tuple[float, float]]:
    """step -> (training loss, learning rate), checking every step was logged exactly once."""
    history = json.loads((root / run / "pretrain" / "history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == list(range(1, len(steps) + 1)), steps
    return {h["step"]: (h["loss"], h["lr"]) for h in history if "loss" in h}


def _assert_same_run(resumed: dict[int, tuple[float, float]], reference: dict[int, tuple[float, float]]) -> None:
    assert sorted(resumed) == sorted(reference) == list(range(1, 31))
    for step, (loss, lr) in reference.items():
        assert resumed[step][1] == pytest.approx(lr, rel=1e-9), f"learning rate differs at step {step}"
        assert resumed[step][0] == pytest.approx(loss, abs=1e-4), f"loss differs at step {step}"


def _complete_checkpoint(store: Store, run: str) -> str | None:
    """The newest complete pre-training checkpoint, without the warnings about incomplete ones."""
    names = sorted((n for n in store.list_dir(run, "pretrain") if checkpoints.NAME.fullmatch(n)), reverse=True)
    return next((n for n in names if checkpoints.problem(store, store.path(run, "pretrain", n)) is None), None)


def _when_checkpointed(store: Store, run: str, action: Callable[[], Any], timeout: float = 600) -> dict[str, Any]:
    """Run `action` once the first complete checkpoint is in the store; returns what it saw."""
    seen: dict[str, Any] = {}

    def watch() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and "result" not in seen:
            try:
                name = _complete_checkpoint(store, run)
            except OSError:  # a folder removed while it was listed
                name = None
            if name:
                seen["checkpoint"], seen["result"] = name, action()
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    seen["thread"] = thread
    return seen


def _train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> list[str]:
    """The corpus, and one tokenizer for every run compared here: `tokenizers` breaks ties between
    equally frequent merges in hash order, so two trainings may differ in a few rare tokens (a run
    trains its tokenizer once and every resume reuses it)."""
    from plm_ray.config import TokenizerSection
    from plm_ray.data import embedded
    from plm_ray.data.tokenizer import train_wordpiece

    folder = tmp_path_factory.mktemp("corpus")
    lines = embedded.corpus_lines(n_docs=4000, seed=11)
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    train_wordpiece([lines], TokenizerSection(vocab_size=512)).save_pretrained(folder / "tokenizer")
    return [f"data.corpus={folder / 'corpus.txt'}", f"tokenizer.path={folder / 'tokenizer'}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Iterator[Callable[[int], Any]]:
    """The uninterrupted run each fault is compared with, one per ZeRO stage, made on first use."""
    root = tmp_path_factory.mktemp("reference")
    made: dict[int, Any] = {}

    def get(stage: int) -> Any:
        if stage not in made:
            cfg = small_config(root, f"ref{stage}", *RESUMABLE, *corpus, f"pretrain.zero_stage={stage}")
            pipeline.execute("pretrain", cfg)
            made[stage] = {"trajectory": _trajectory(root, f"ref{stage}"), "root": root, "run": f"ref{stage}"}
        return made[stage]

    yield get


@pytest.mark.parametrize("stage", [2, 3])
def test_worker_killed_mid_training_resumes_exactly(tmp_path: Path, corpus: list[str], reference, stage: int):
    cfg = small_config(tmp_path, "killed", *RESUMABLE, *corpus, f"pretrain.zero_stage={stage}")
    store, run = Store(cfg.store), "killed"

    def kill_a_worker() -> int:
        victim = _train_workers()[-1]
        victim.send_signal(signal.SIGKILL)
        return victim.pid

    seen = _when_checkpointed(store, run, kill_a_worker)
    result = pipeline.execute("pretrain", cfg)["pretrain"]
    assert seen.get("result"), "no worker was killed: the run ended before its first checkpoint was complete"
    assert result["steps"] == 30
    history = store.read_json(run, "pretrain", "history.json")
    resumes = [h for h in history if "resumed_from" in h]
    # restarted once, from the newest checkpoint complete when the worker died (the one the killer saw,
    # or one completed in the instant between seeing it and the kill): at most 5 steps are repeated
    assert len(resumes) == 1 and resumes[0]["resumed_from"] >= seen["checkpoint"], (resumes, seen)
    _assert_same_run(_trajectory(tmp_path, run), reference(stage)["trajectory"])


def _cli(*args: str, cwd: Path, log: str) -> subprocess.Popen[bytes]:
    """`plm-ray ARGS` in a fresh process with a Ray cluster of its own (which dies with it); its
    output goes to cwd/log (a pipe nobody reads while it runs would fill and stall it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "plm_ray", *args],
        cwd=cwd,
        env={**os.environ, "RAY_ADDRESS": "local"},
        stdout=open(cwd / log, "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen[bytes], cwd: Path, log: str, timeout: float = 900) -> str:
    proc.wait(timeout=timeout)
    return (cwd / log).read_text(errors="replace")


def _kill_driver(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the driver, then wait for its Ray cluster to go with it (Ray fate-shares its processes
    with the driver that started them); stragglers that outlive it are killed too."""
    family = psutil.Process(proc.pid).children(recursive=True)
    workers = []
    for child in family:
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()) or "finetune_trial" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.NoSuchProcess:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"{len(alive)} training process(es) outlived their driver"
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _sets(*items: str) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def test_driver_killed_then_the_same_command_continues(tmp_path: Path, corpus: list[str], reference):
    args = ["pretrain", *_sets(*SMALL, *RESUMABLE, *corpus, "pretrain.zero_stage=2", "run.name=crash")]
    args += _sets(f"store.root={tmp_path}")
    store = Store(small_config(tmp_path, "crash").store)
    driver = _cli(*args, cwd=tmp_path, log="first.log")
    seen = _when_checkpointed(store, "crash", lambda: _kill_driver(driver) or True)
    seen["thread"].join()
    assert seen.get("result"), (tmp_path / "first.log").read_text()[-3000:]
    assert not store.exists("crash", "pretrain", "result.json")

    again = _cli(*args, "--resume", cwd=tmp_path, log="again.log")
    out = _finish(again, tmp_path, "again.log")
    assert again.returncode == 0, out[-3000:]
    resumes = [h["resumed_from"] for h in store.read_json("crash", "pretrain", "history.json") if "resumed_from" in h]
    assert len(resumes) == 1 and resumes[0] >= seen["checkpoint"], (resumes, seen)
    assert f"[plm-ray] pretrain of crash continues from {resumes[0]}" in out
    _assert_same_run(_trajectory(tmp_path, "crash"), reference(2)["trajectory"])


@pytest.mark.parametrize("damage", ["truncate", "delete", "no_manifest"])
def test_half_written_checkpoint_is_passed_over_with_a_warning(
    tmp_path: Path, corpus: list[str], reference, damage: str, caplog: pytest.LogCaptureFixture
):
    ref = reference(2)
    root = tmp_path / "store"
    shutil.copytree(ref["root"] / ref["run"], root / "half")
    store = Store(small_config(root, "half").store)
    # as if the run died while writing its newest checkpoint (before result.json and the export)
    store.delete("half", "pretrain", "result.json")
    store.delete("half", "pretrain", "export")
    newest, previous = sorted(n for n in store.list_dir("half", "pretrain") if checkpoints.NAME.fullmatch(n))[-2:][::-1]
    shard = next((root / "half" / "pretrain" / newest / "state").glob("zero_pp_rank_1_*optim_states.pt"))
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:1000])
        expected = f"state/{shard.name} has 1000 bytes, the manifest says"
    elif damage == "delete":
        shard.unlink()
        expected = f"state/{shard.name} is missing"
    else:
        (root / "half" / "pretrain" / newest / "manifest-rank1.json").unlink()
        expected = "rank 1's manifest is missing"
    assert checkpoints.latest_complete(store, "half") == previous
    assert f"{newest} is incomplete: {expected}" in caplog.text

    cfg = small_config(root, "half", *RESUMABLE, *corpus, "pretrain.zero_stage=2")
    assert pipeline.execute("pretrain", cfg, resume=True)["pretrain"]["steps"] == 30
    resumes = [h["resumed_from"] for h in store.read_json("half", "pretrain", "history.json") if "resumed_from" in h]
    assert resumes == [previous]
    _assert_same_run(_trajectory(root, "half"), ref["trajectory"])


def test_resume_with_another_configuration_is_refused(tmp_path: Path, corpus: list[str], reference):
    ref = reference(2)
    shutil.copytree(ref["root"] / ref["run"], tmp_path / "other")
    (tmp_path / "other" / "pretrain" / "result.json").unlink()
    cfg = small_config(tmp_path, "other", *RESUMABLE, *corpus, "pretrain.zero_stage=3")
    with pytest.raises(ConfigError, match="'pretrain.zero_stage' = 3, but the checkpoint .* was made with 2"):
        pipeline.execute("pretrain", cfg, resume=True)


def test_resume_compares_the_zero_stage_as_run():
    """An auto stage (the default) matches a checkpoint saved with the stage auto comes to on the same
    workers, as a run started before auto existed saved it; another stage is still refused."""
    two = load_config(None, ["pretrain.num_workers=2"]).to_dict()
    checkpoints.check_compatible({**two, "pretrain": {**two["pretrain"], "zero_stage": 2}}, two, "ckpt")
    one = load_config(None, ["pretrain.num_workers=1"]).to_dict()
    with pytest.raises(ConfigError, match="'pretrain.zero_stage' = 0, but the checkpoint ckpt was made with 2"):
        checkpoints.check_compatible({**one, "pretrain": {**one["pretrain"], "zero_stage": 2}}, one, "ckpt")


def _trial_states(sweep_dir: Path) -> dict[str, str]:
    """trial id -> status, from Tune's own experiment snapshot."""
    states: dict[str, str] = {}
    for snapshot in sorted(sweep_dir.glob("experiment_state-*.json")):
        try:
            trials = json.loads(snapshot.read_text())["trial_data"]
        except (json.JSONDecodeError, KeyError):
            continue  # being rewritten
        for entry in trials:
            trial = json.loads(entry[0])
            states[trial["trial_id"]] = trial["status"]
    return states


def _trial_reports(sweep_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """trial folder -> every result the trial reported (Tune's result.json, one line per report)."""
    reports = {}
    for log in sweep_dir.glob("*_lr=*/result.json"):
        reports[log.parent.name] = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return reports


def test_sweep_driver_killed_then_resumed_keeps_finished_trials(tmp_path: Path, reference):
    ref = reference(2)
    export = ref["root"] / ref["run"] / "pretrain" / "export"
    sets = [*SMALL, f"store.root={tmp_path}", "run.name=sw", f"sweep.model={export}", "sweep.epochs=2"]
    sets += ["sweep.learning_rates=[0.0002, 0.0005, 0.001, 0.002]", "sweep.max_concurrent_trials=1"]
    sweep_dir = tmp_path / "sw" / "sweep"
    driver = _cli("sweep", *_sets(*sets), cwd=tmp_path, log="first.log")
    deadline = time.time() + 600
    while "TERMINATED" not in _trial_states(sweep_dir).values():
        assert time.time() < deadline and driver.poll() is None, "no trial finished before the sweep ended"
        time.sleep(0.2)
    _kill_driver(driver)
    states = _trial_states(sweep_dir)
    finished = {t for t, s in states.items() if s == "TERMINATED"}
    assert 0 < len(finished) < 4, states
    before = _trial_reports(sweep_dir)

    again = _cli("sweep", *_sets(*sets), "--resume", cwd=tmp_path, log="again.log")
    out = _finish(again, tmp_path, "again.log")
    assert again.returncode == 0, out[-3000:]
    assert "finished trials are kept" in out
    after = _trial_reports(sweep_dir)
    for folder, reports in before.items():
        if any(t in folder for t in finished):
            assert after[folder] == reports, f"finished trial {folder} ran again"
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["learning_rate"]) for r in rows) == [0.0002, 0.0005, 0.001, 0.002]
    assert len({r["trial_id"] for r in rows}) == 4 and all(r["status"] == "OK" for r in rows)
    assert all(float(r["epochs_run"]) >= 1 for r in rows)


def _sample_pss(samples: list[tuple[float, int]], done: threading.Event) -> None:
    """(time, bytes) every second: the summed proportional set size of this process and every
    process below it (the Ray cluster it started); PSS counts Ray's shared object store once."""
    me = psutil.Process()
    while not done.wait(1.0):
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        samples.append((time.time(), total))


def test_sixteen_trials_on_two_cpus_queue_and_all_complete(tmp_path: Path, reference):
    ref = reference(2)
    export = ref["root"] / ref["run"] / "pretrain" / "export"
    rates = [round(1e-4 * 1.25**i, 8) for i in range(16)]
    cfg = small_config(
        tmp_path, "load", f"sweep.model={export}", f"sweep.learning_rates={rates}", "sweep.max_concurrent_trials=2"
    )
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    sampler = threading.Thread(target=_sample_pss, args=(samples, done), daemon=True)
    sampler.start()
    try:
        result = pipeline.execute("sweep", cfg)["sweep"]
    finally:
        done.set()
        sampler.join()
    assert len(result["trials"]) == 16 and all(t["status"] == "OK" for t in result["trials"])
    spans = []
    for reports in _trial_reports(tmp_path / "load" / "sweep").values():
        last = reports[-1]
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    assert len(spans) == 16
    most_at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most_at_once <= 2, f"{most_at_once} trials ran at once with max_concurrent_trials=2"
    # bounded: the last trials take no more memory than the first ones did
    start, end = samples[0][0], samples[-1][0]
    first = max(m for t, m in samples if t < start + (end - start) / 4)
    last = max(m for t, m in samples if t > end - (end - start) / 4)
    peak, first_gib, last_gib = max(m for _, m in samples) / 2**30, first / 2**30, last / 2**30
    print(f"16-trial sweep: peak PSS {peak:.2f} GiB (first quarter {first_gib:.2f}, last {last_gib:.2f})")
    assert last <= 1.25 * first + 256 * 2**20, (first, last)
