"""Where training's figures go besides the store's own files: TensorBoard always (pre-training in
`<run>/pretrain/tensorboard`, each trial in its folder: `tensorboard --logdir <run>` shows both), and,
when configured, MLflow (`tracking.mlflow_uri`) and Weights & Biases (`tracking.wandb_project`)
through Ray's own integrations: pre-training logs from its first worker (`setup_mlflow`,
`setup_wandb`), a sweep's trials through Tune's logger callbacks. W&B runs offline with
WANDB_MODE=offline. Each run of plm-ray is one MLflow experiment and one W&B group, named as the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plm_ray.config import Config


def resolve(cfg: Config) -> None:
    """A local MLflow folder as an absolute file:// URI: workers and trials run in other folders."""
    uri = cfg.tracking.mlflow_uri
    if uri and "://" not in uri:
        cfg.tracking.mlflow_uri = Path(uri).expanduser().resolve().as_uri()
    _allow_file_store(cfg.tracking.mlflow_uri)


def _allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its folder store (in maintenance) unless opted in; a folder is what a user
    who names one asks for. In the driver (Tune's callback) and in the pre-training worker."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class Trackers:
    """Pre-training's trackers, on its first worker (the others log nothing)."""

    def __init__(self, cfg: Config, run: str, workdir: Path, rank: int):
        t = cfg.tracking
        self.tensorboard = self.mlflow = self.wandb = None
        if rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        if t.mlflow_uri:
            from ray.air.integrations.mlflow import setup_mlflow

            _allow_file_store(t.mlflow_uri)
            self.mlflow = setup_mlflow(
                config=_flat(cfg.to_dict()),
                tracking_uri=t.mlflow_uri,
                experiment_name=run,
                run_name="pretrain",
                create_experiment_if_not_exists=True,
            )
        if t.wandb_project:
            from ray.air.integrations.wandb import setup_wandb

            self.wandb = setup_wandb(config=cfg.to_dict(), project=t.wandb_project, group=run, name=f"{run}/pretrain")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, float) and k != "step"}
        if self.tensorboard is not None:
            for name, value in numbers.items():
                self.tensorboard.add_scalar(f"pretrain/{name}", value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(numbers, step=step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()


def tune_callbacks(cfg: Config, run: str) -> list[Any]:
    """Tune's MLflow and W&B logger callbacks for a sweep's trials, as configured."""
    t, callbacks = cfg.tracking, []
    if t.mlflow_uri:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(t.mlflow_uri, experiment_name=run, tags={"sweep": cfg.sweep.name}))
    if t.wandb_project:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(WandbLoggerCallback(project=t.wandb_project, group=f"{run}/{cfg.sweep.name}"))
    return callbacks


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """MLflow parameters are flat: `pretrain.learning_rate`, lists as text."""
    return {f"{s}.{k}": v if not isinstance(v, list) else str(v) for s, keys in config.items() for k, v in keys.items()}
