from pathlib import Path

import pytest

from plm_ray.cli import main
from plm_ray.config import ConfigError, load_config


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert cfg.data.corpus == "embedded" and cfg.sweep.task == "embedded"
    assert cfg.pretrain.num_workers == 2 and cfg.pretrain.zero_stage == -1  # auto
    assert len(cfg.sweep.learning_rates) >= 4


def test_yaml_then_set_overrides(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("pretrain:\n  max_steps: 50\n  zero_stage: 3\nsweep:\n  learning_rates: [0.1, 0.2]\n")
    cfg = load_config(f, ["pretrain.max_steps=7", "sweep.learning_rates=[1e-4]", "run.name=abc"])
    assert cfg.pretrain.max_steps == 7 and cfg.pretrain.zero_stage == 3
    assert cfg.sweep.learning_rates == [1e-4] and cfg.run.name == "abc"


@pytest.mark.parametrize(
    "sets, message",
    [
        (["pretrain.max_stepz=3"], "unknown config key 'pretrain.max_stepz'"),
        (["pretrian.max_steps=3"], "unknown config section 'pretrian'"),
        (["pretrain.max_steps=abc"], "'pretrain.max_steps': expected int, got 'abc'"),
        (["pretrain.zero_stage=4"], "'pretrain.zero_stage' = 4: must be -1 (auto), 0, 1, 2 or 3"),
        (["pretrain.learning_rate=0"], "'pretrain.learning_rate' = 0.0: learning rate must be > 0"),
        (["sweep.learning_rates=[0.001, -1]"], "learning rate must be > 0"),
        (
            ["data.block_size=512", "model.max_positions=128"],
            "'data.block_size' = 512: is larger than model.max_positions",
        ),
        (["model.preset=huge"], "'model.preset' = 'huge'"),
        (["pretrain.use_gpu=maybe"], "'pretrain.use_gpu': expected bool"),
    ],
)
def test_bad_config_is_one_clear_error(sets, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, sets)
    assert message in str(err.value)


def test_cli_reports_config_errors_with_exit_2(tmp_path: Path, capsys):
    assert main(["pretrain", "--set", "pretrain.bogus=1", "--set", f"store.root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plm-ray: error: unknown config key 'pretrain.bogus'")
    missing = tmp_path / "nope.yaml"
    assert main(["run", "--config", str(missing)]) == 2
    assert f"config file not found: {missing}" in capsys.readouterr().err


def test_shipped_configs_load():
    configs = Path(__file__).resolve().parent.parent / "pipelines" / "configs"
    loaded = {p.name: load_config(p) for p in sorted(configs.glob("*.yaml"))}
    assert {"wiki_sst2.yaml", "gpu_bert_base.yaml", "gpu_sweep.yaml"} <= set(loaded)
    gpu = loaded["gpu_bert_base.yaml"].pretrain
    assert gpu.use_gpu and gpu.num_workers == 8 and gpu.precision == "auto" and gpu.zero_stage == -1
    assert loaded["gpu_sweep.yaml"].sweep.gpus_per_trial == 0.5
