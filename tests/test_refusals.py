"""Bad input, refused before any work: each case through the CLI as a user types it, checked for the
four properties: one line `plm-ray: error: ...` naming the key (or file) and the value and saying
what is allowed; exit code 2; nothing created or deleted in the store; and Ray never started (the
refusal comes before it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plm_ray import pipeline
from plm_ray.cli import main

MISSING = "/nonexistent/plm-ray-test"
# (command line after the store and run settings, what the one line must say)
CASES = [
    (["pretrain", "--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    (["run", "--config", f"{MISSING}.yaml"], f"config file not found: {MISSING}.yaml"),
    (["run", "--set", "pretrain"], "--set expects section.key=value, got 'pretrain'"),
    (["run", "--set", "a.b.c=1"], "--set key must be section.key, got 'a.b.c'"),
    (["run", "--set", "pretrian.max_steps=3"], "unknown config section 'pretrian'"),
    (["run", "--set", "pretrain.max_stepz=3"], "unknown config key 'pretrain.max_stepz'"),
    (["run", "--set", "pretrain.max_steps=abc"], "'pretrain.max_steps': expected int, got 'abc'"),
    (["run", "--set", "pretrain.use_gpu=maybe"], "'pretrain.use_gpu': expected true or false, got 'maybe'"),
    (["run", "--set", "pretrain.max_steps=-5"], "'pretrain.max_steps' = -5: must be >= 0"),
    (["run", "--set", "pretrain.log_every_steps=0"], "'pretrain.log_every_steps' = 0: must be >= 1"),
    (["run", "--set", "pretrain.num_workers=0"], "'pretrain.num_workers' = 0: must be >= 1"),
    (["run", "--set", "pretrain.cpus_per_worker=0"], "'pretrain.cpus_per_worker' = 0: must be >= 1"),
    (["run", "--set", "pretrain.batch_size=0"], "'pretrain.batch_size' = 0: must be >= 1"),
    (["run", "--set", "pretrain.grad_accum=0"], "'pretrain.grad_accum' = 0: must be >= 1"),
    (["run", "--set", "pretrain.learning_rate=0"], "'pretrain.learning_rate' = 0.0: must be > 0"),
    (["run", "--set", "pretrain.weight_decay=-0.1"], "'pretrain.weight_decay' = -0.1: must be >= 0"),
    (["run", "--set", "pretrain.warmup_steps=-1"], "'pretrain.warmup_steps' = -1: must be >= 0"),
    (["run", "--set", "pretrain.grad_clip=-1"], "'pretrain.grad_clip' = -1.0: must be >= 0"),
    (["run", "--set", "pretrain.zero_stage=4"], "'pretrain.zero_stage' = 4: must be in [-1, 3]"),
    (["run", "--set", "pretrain.precision=bf32"], "'pretrain.precision' = 'bf32': must be one of auto, fp32"),
    (["run", "--set", "pretrain.budget_minutes=-1"], "'pretrain.budget_minutes' = -1.0: must be >= 0"),
    (["run", "--set", "pretrain.max_steps=0", "--set", "pretrain.epochs=0"], "'pretrain.epochs' = 0: must be >= 1"),
    (["run", "--set", "pretrain.offload=true", "--set", "pretrain.zero_stage=0"], "offload needs a ZeRO stage"),
    (["run", "--set", "data.block_size=4"], "'data.block_size' = 4: must be >= 8"),
    (["run", "--set", "data.eval_fraction=0.6"], "'data.eval_fraction' = 0.6: must be in (0, 0.5)"),
    (["run", "--set", "data.chunk_mb=0"], "'data.chunk_mb' = 0.0: must be > 0"),
    (["run", "--set", "data.format=xml"], "'data.format' = 'xml': must be one of auto, text"),
    (["run", "--set", "tokenizer.vocab_size=10"], "'tokenizer.vocab_size' = 10: must be in [64,"),
    (["run", "--set", "masking.probability=1.5"], "'masking.probability' = 1.5: must be in (0, 1)"),
    (
        ["run", "--set", "masking.mask_fraction=0.95"],
        "'masking.random_fraction' = 0.1: mask_fraction + random_fraction",
    ),
    (["run", "--set", "model.num_heads=5"], "'model.num_heads' = 5: must divide the hidden size 128"),
    (["run", "--set", "model.preset=huge"], "'model.preset' = 'huge': must be one of tiny, mini"),
    (
        ["run", "--set", "model.arch=xlm", "--set", "model.intermediate_size=256"],
        "arch xlm needs 4 x hidden_size = 512",
    ),
    (["run", "--set", "data.block_size=512", "--set", "model.max_positions=128"], "is larger than model.max_positions"),
    (["run", "--set", "optimizer.betas=[0.9]"], "'optimizer.betas' = [0.9]: needs 2 values, each must be in [0, 1)"),
    (["run", "--set", "optimizer.eps=0"], "'optimizer.eps' = 0.0: must be > 0"),
    (["run", "--set", "sweep.learning_rates=[]"], "'sweep.learning_rates' = []: needs at least one value"),
    (["run", "--set", "sweep.gpus_per_trial=1.5"], "'sweep.gpus_per_trial' = 1.5: above 1 must be a whole number"),
    (["run", "--set", "sweep.lr_min=0.01"], "'sweep.lr_min' = 0.01: must be below sweep.lr_max"),
    (["run", "--set", "sweep.search=bayes"], "'sweep.search' = 'bayes': must be one of grid, random"),
    (["run", "--set", "sweep.metric=f1"], "'sweep.metric' = 'f1': must be one of accuracy, macro_f1, loss"),
    (["run", "--set", "sweep.num_labels=1"], "'sweep.num_labels' = 1: must be 0 (infer) or >= 2"),
    (["run", "--set", "sweep.grace_period=5"], "'sweep.grace_period' = 5: must be <= the most epochs"),
    (["run", "--set", "sweep.scheduler=pbt", "--set", "sweep.search=optuna"], "pbt mutates the trials itself"),
    (["run", "--set", "store.endpoint=127.0.0.1:9000"], "'store.endpoint' = '127.0.0.1:9000': must start with http://"),
    (["run", "--set", "run.seed=-1"], "'run.seed' = -1: must be >= 0"),
    (["run", "--set", "run.name=../../etc"], "'run.name' = '../../etc': must be a folder name"),
    (["run", "--set", "run.name=cache"], "'run.name' = 'cache': must be a folder name"),
    (["run", "--set", "run.name=.hidden"], "'run.name' = '.hidden': must be a folder name"),
    (["sweep", "--set", "sweep.name=../x"], "'sweep.name' = '../x': must be a folder name"),
    (["pretrain", "--set", f"data.corpus={MISSING}"], f"corpus path not found: {MISSING}"),
    (["sweep", "--set", "sweep.model=random", "--set", f"sweep.task={MISSING}.tsv"], f"path not found: {MISSING}.tsv"),
    (["pretrain", "--set", f"tokenizer.path={MISSING}"], f"cannot load tokenizer '{MISSING}'"),
    (
        ["sweep", "--set", "sweep.model=random", "--set", f"tokenizer.path={MISSING}"],
        f"cannot load tokenizer '{MISSING}'",
    ),
    (["pretrain", "--set", f"model.init_from={MISSING}"], f"not a loadable Hugging Face checkpoint: {MISSING}"),
    (["sweep", "--set", f"sweep.model={MISSING}"], f"checkpoint path not found: {MISSING}"),
    (
        ["pretrain", "--set", f"pretrain.deepspeed={MISSING}.json"],
        f"'pretrain.deepspeed' = '{MISSING}.json': cannot read it",
    ),
]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with a completed run in it, which no refused command may touch."""
    run = tmp_path / "store" / "kept" / "pretrain"
    run.mkdir(parents=True)
    (run / "result.json").write_text("{}")
    return tmp_path / "store"


def snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written_before_ray(
    args: list[str], message: str, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    def no_ray() -> None:
        raise AssertionError("Ray was started before the bad input was refused")

    monkeypatch.setattr(pipeline, "ensure_ray", no_ray)
    before = snapshot(store)
    command, *rest = args
    assert main([command, "--set", f"store.root={store}", "--set", "run.name=fresh", *rest]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plm-ray: error: "), err
    assert message in err[0], err[0]
    assert snapshot(store) == before, "a refused command created or deleted something in the store"


def test_resume_without_a_run_name_and_a_deepspeed_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Two refusals that need their own set-up: --resume names no run, and a DeepSpeed JSON that sets
    what plm-ray sets from its own keys (its other keys merge; "auto" leaves plm-ray's value)."""
    assert main(["pretrain", "--resume", "--set", f"store.root={tmp_path}"]) == 2
    assert "--resume needs the run's name: --set run.name=NAME" in capsys.readouterr().err
    conflicting = tmp_path / "ds.json"
    conflicting.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16, "gradient_clipping": "auto"}))
    assert main(["pretrain", "--set", f"store.root={tmp_path}", "--set", f"pretrain.deepspeed={conflicting}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "DeepSpeed key 'train_micro_batch_size_per_gpu' = 16 conflicts with 32" in err and 'use "auto"' in err
    assert not [p for p in tmp_path.iterdir() if p.name != "ds.json"], "nothing is written"
