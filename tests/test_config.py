"""The typed configuration: defaults, YAML then --set, each --set read as its key's type, the shipped
presets, and the reference generated from the schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from plm_ray import __version__
from plm_ray.cli import main
from plm_ray.config import Config, load_config
from plm_ray.config.reference import reference

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert cfg.data.corpus == "embedded" and cfg.sweep.task == "embedded"
    assert cfg.pretrain.num_workers == 2 and cfg.pretrain.zero_stage == -1  # auto
    assert len(cfg.sweep.learning_rates) >= 4 and cfg.sweep.search == "grid"


def test_yaml_then_set_overrides(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("pretrain:\n  max_steps: 50\n  zero_stage: 3\nsweep:\n  learning_rates: [0.1, 0.2]\n")
    cfg = load_config(f, ["pretrain.max_steps=7", "sweep.learning_rates=[1e-4]", "run.name=abc"])
    assert cfg.pretrain.max_steps == 7 and cfg.pretrain.zero_stage == 3
    assert cfg.sweep.learning_rates == [1e-4] and cfg.run.name == "abc"


def test_a_set_value_is_read_as_its_keys_type():
    """YAML alone reads `yes` as true and `~` as null; a --set value takes its key's own type, and
    only list keys are read as YAML (a single value becomes a one-item list)."""
    cfg = load_config(
        None,
        [
            "run.name=yes",
            "store.root=~",
            "sweep.batch_sizes=[16, 32]",
            "sweep.epochs=2",
            "pretrain.learning_rate=1e-4",
            "pretrain.use_gpu=off",
            "data.text_column=123",
        ],
    )
    assert (cfg.run.name, cfg.store.root, cfg.data.text_column) == ("yes", "~", "123")
    assert cfg.sweep.batch_sizes == [16, 32] and cfg.sweep.epochs == [2]
    assert cfg.pretrain.learning_rate == 1e-4 and cfg.pretrain.use_gpu is False


def test_shipped_configs_load():
    configs = REPO / "pipelines" / "configs"
    loaded = {p.name: load_config(p) for p in sorted(configs.glob("*.yaml"))}
    assert {"wiki_sst2.yaml", "gpu_bert_base.yaml", "gpu_sweep.yaml"} <= set(loaded)
    gpu = loaded["gpu_bert_base.yaml"].pretrain
    assert gpu.use_gpu and gpu.num_workers == 8 and gpu.precision == "auto" and gpu.zero_stage == -1
    assert gpu.batch_size == 256 and gpu.grad_accum == 1
    assert loaded["gpu_sweep.yaml"].sweep.gpus_per_trial == 0.5


def test_the_reference_has_every_key_with_its_type_default_and_meaning():
    text = reference()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            row = next(line for line in text.splitlines() if line.startswith(f"| `{section.name}.{f.name}` |"))
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert len(cells) == 4 and all(cells), row
    assert "| `pretrain.max_steps` | int | `1000` | optimizer steps; 0: run `epochs` epochs (>= 0) |" in text


def test_the_readme_carries_the_reference():
    readme = (REPO / "README.md").read_text()
    assert reference() in readme, "README.md's configuration table differs from `plm-ray config --reference`"


def test_version_and_the_resolved_config_from_the_cli(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"plm-ray {__version__}"
    assert main(["config", "--set", "pretrain.max_steps=7", "--set", "run.name=yes"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["pretrain"]["max_steps"] == 7 and resolved["run"]["name"] == "yes"  # a name, not YAML's True
    assert main(["config", "--reference"]) == 0 and capsys.readouterr().out == reference()
    assert main(["config", "--set", "pretrain.max_steps=-5"]) == 2
    assert "pretrain.max_steps" in capsys.readouterr().err
