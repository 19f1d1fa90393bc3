"""The Ray Tune search a sweep runs: its space, searcher, scheduler and run configuration, or the
experiment an interrupted sweep left, restored (finished trials keep their results).

The space holds learning rate, batch size, warm-up ratio, weight decay and epochs. `grid` crosses
every listed value (`learning_rates`, `batch_sizes`, ...); `random`, `optuna` and `hyperopt` draw
`num_samples` trials, the learning rate log-uniform from [lr_min, lr_max] and the others from their
lists. Schedulers: `asha` stops weak trials early, `pbt` copies the best trials' weights into the
weak ones and perturbs their learning rate and weight decay, `none` runs every trial to its end.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

from plm_ray.config import Config, ConfigError
from plm_ray.monitor import heartbeat
from plm_ray.store import Store

MODES = {"accuracy": "max", "macro_f1": "max", "loss": "min"}
# search: (package, Tune module, class, its seed argument)
SEARCHERS = {
    "optuna": ("optuna", "ray.tune.search.optuna", "OptunaSearch", "seed"),
    "hyperopt": ("hyperopt", "ray.tune.search.hyperopt", "HyperOptSearch", "random_state_seed"),
}


def finetune_trial(hparams: dict[str, Any], setup: dict[str, Any]) -> None:
    """The trainable (its name is the trial processes' name). Tune unpickles it by reference in the
    driver too, so it imports the trial (DeepSpeed, the model classes: seconds of imports) only where
    it runs."""
    from plm_ray.sweep import trial

    trial.finetune_trial(hparams, setup)


def check_searcher(cfg: Config) -> None:
    """Optuna and HyperOpt are optional packages (`pip install 'plm-ray[search]'`): refused up front."""
    s = cfg.sweep
    if s.search in SEARCHERS:
        package = SEARCHERS[s.search][0]
        try:
            __import__(package)
        except ImportError:
            raise ConfigError(
                f"config key 'sweep.search' = {s.search!r}: needs the {package} package (pip install 'plm-ray[search]')"
            ) from None


def search_space(cfg: Config) -> tuple[dict[str, Any], int]:
    """(param_space, num_samples)."""
    s = cfg.sweep
    lists = {
        "batch_size": s.batch_sizes,
        "warmup_ratio": s.warmup_ratios,
        "weight_decay": s.weight_decays,
        "epochs": s.epochs,
    }
    if s.search == "grid":
        return {
            "learning_rate": tune.grid_search(s.learning_rates),
            **{k: tune.grid_search(v) for k, v in lists.items()},
        }, 1
    return {
        "learning_rate": tune.loguniform(s.lr_min, s.lr_max),
        **{k: tune.choice(v) for k, v in lists.items()},
    }, s.num_samples


def _searcher(cfg: Config) -> Any:
    s = cfg.sweep
    if s.search not in SEARCHERS:
        return None  # grid and random: Tune's own variant generator
    _, module, name, seed = SEARCHERS[s.search]
    searcher = getattr(__import__(module, fromlist=[name]), name)
    return searcher(metric=s.metric, mode=MODES[s.metric], **{seed: cfg.run.seed})


def _scheduler(cfg: Config) -> TrialScheduler:
    """Time is `epoch` (fractional with evals_per_epoch > 1), not Tune's iteration count: a trial
    restarted by a restore counts from 1 again."""
    s = cfg.sweep
    if s.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=max(s.epochs), grace_period=s.grace_period)
    if s.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch",
            perturbation_interval=1 / s.evals_per_epoch,
            hyperparam_mutations={
                "learning_rate": tune.loguniform(s.lr_min, s.lr_max),
                "weight_decay": s.weight_decays,
            },
        )
    return FIFOScheduler()


def trial_dirname(trial: Trial) -> str:
    """Ray's default name rounds the rate to 4 decimals, so a 5e-05 trial reads learning_rate=0.0001."""
    return f"{trial.trial_id}_lr={trial.config['learning_rate']:.3g}_bs={trial.config['batch_size']}"


class TrialLines(tune.Callback):
    """One console line per trial evaluation (Tune's own tables come with --verbose), and a
    heartbeat for the monitor: a trial report is progress."""

    def __init__(self, metric: str):
        self.metric = metric

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        c = trial.config
        print(
            f"[sweep] {trial.trial_id} lr {c['learning_rate']:.2e} batch {c['batch_size']}: epoch {result['epoch']:g} "
            f"{self.metric} {result[self.metric]:.4f} ({result['examples_per_second']:,.0f} examples/s)",
            flush=True,
        )
        heartbeat(f"sweep trials (last report from {trial.trial_id})")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        print(f"[sweep] {trial.trial_id} failed; its error is in {trial.path}", flush=True)


def tuner(
    cfg: Config, store: Store, run: str, setup: dict[str, Any], callbacks: list[Any], verbose: bool
) -> tune.Tuner:
    """The Tuner of this sweep: restored where an interrupted one left its experiment."""
    s = cfg.sweep
    space, samples = search_space(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(finetune_trial, setup=setup), {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial}
    )
    experiment = store.path(run, s.name)
    if tune.Tuner.can_restore(experiment, storage_filesystem=store.fs):
        print(f"[plm-ray] sweep {s.name} continues: finished trials are kept, the others run again", flush=True)
        return tune.Tuner.restore(
            experiment, trainable, restart_errored=True, param_space=space, storage_filesystem=store.fs
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=MODES[s.metric],
            search_alg=_searcher(cfg),
            scheduler=_scheduler(cfg),
            num_samples=samples,
            max_concurrent_trials=s.max_concurrent_trials,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=s.name,
            storage_path=store.path(run),
            storage_filesystem=store.fs,
            callbacks=callbacks,
            verbose=1 if verbose else 0,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=s.metric, checkpoint_score_order=MODES[s.metric]
            ),
        ),
    )
