"""Hyper-parameter search: Ray Tune with ASHA over `adactrl train` runs (the `adactrl tune` command).

A search space is a Python file with a `search_space()` function that returns `ray.tune` samplers
keyed by `adactrl train` flag names (tune_configs/). Every trial is one `run_training` in its own
output directory with its own MLflow run, reporting the validation metrics after each epoch;
ASHA stops the trials whose validation reward trails at a rung. A trial reserves one placement
group, [driver] + [learner] + [one bundle per rollout worker], and its actors run in that group's
bundles, so a trial never waits for actors that a concurrent trial holds. Trials report through
a training observer (`TrialReporter`), the dashboard's metrics through another.

Trials that sample reward coefficients train on their own reward, so their validation rewards
are on different scales: trials are compared (by ASHA and for the best configuration) on
`tune/val_reward`, each validation inference re-scored with the base run's coefficients. Where
the space samples no coefficient it equals `val/reward`.

Failure modes are checked before any trial starts: a missing or invalid config, an unreachable
Ray address (ray.init would retry for minutes) and a trial that no cluster node can hold (Tune
would wait for it forever).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import socket
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from adactrl.atomic import atomic_path, write_text
from adactrl.orchestration.dashboard import TrainingDashboard
from adactrl.orchestration.driver import run_training
from adactrl.orchestration.ray_backend import Placement, actor_bundles, local_cpus, start_ray
from adactrl.reward import RewardConfig, score
from adactrl.training.checkpoints import BEST_MODEL
from adactrl.training.config import TrainConfig
from adactrl.training.events import EpochEvent, TrainingObserver, ValidationEvent
from adactrl.training.outputs import DEFAULT_TRACKING_URI, LOG_FILE, TRAINING_HISTORY, VALIDATION_HISTORY
from adactrl.training.records import EvalRecord


MakeConfig = Callable[[dict[str, Any]], TrainConfig]
"""The base run's TrainConfig with a trial's sampled values applied (raises on a bad value)."""

TUNE_METRIC = "tune/val_reward"
"""Validation reward under the base run's reward coefficients: what trials are compared on."""
SEARCH_SPACE_FUNCTION = "search_space"
RESERVED = {
    "output_dir": "each trial writes under the search's --output_dir",
    "mlflow_tracking_uri": "set it on `adactrl tune`",
    "mlflow_experiment": "set it on `adactrl tune`",
    "ray_address": "set it on `adactrl tune`",
    "resume": "a trial always starts fresh",
    "num_epochs": "it is ASHA's horizon: set it on the base run",
    "num_workers": "it sets the resources every trial reserves: set it on the base run",
    "worker_cpus": "it sets the resources every trial reserves: set it on the base run",
    "learner_cpus": "it sets the resources every trial reserves: set it on the base run",
    "allow_config_change": "a trial never resumes",
}
"""Settings a search space may not sample, and why."""
CONNECT_TIMEOUT_S = 5.0
RESULTS_FILE = "trials.csv"
STOPPED_TRIAL_ARTIFACTS = (BEST_MODEL, TRAINING_HISTORY, VALIDATION_HISTORY, LOG_FILE)
BEST_FILE = "best_config.json"


def load_search_space(path: str | Path) -> dict[str, Any]:
    """`search_space()` of a tune config file; a name without `.py` finds the file with it."""
    path = Path(path)
    if not path.is_file() and path.suffix != ".py" and path.with_suffix(".py").is_file():
        path = path.with_suffix(".py")
    if not path.is_file():
        here = sorted(p.name for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"tune config {path} does not exist" + (f"; {path.parent} has {here}" if here else ""))
    spec = importlib.util.spec_from_file_location(f"adactrl_tune_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ValueError(f"tune config {path} does not load: {type(err).__name__}: {err}") from err
    factory = getattr(module, SEARCH_SPACE_FUNCTION, None)
    if not callable(factory):
        raise ValueError(f"tune config {path} must define {SEARCH_SPACE_FUNCTION}() returning a dict of tune samplers")
    space = factory()
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{path}: {SEARCH_SPACE_FUNCTION}() must return a non-empty dict, got {space!r}")
    return space


def check_search_space(space: dict[str, Any], make_config: MakeConfig) -> None:
    """Build the config at each end of every sampler, so a bad space fails before any trial runs."""
    for key, domain in space.items():
        if key in RESERVED:
            raise ValueError(f"the search space samples {key!r}: {RESERVED[key]}")
        if isinstance(domain, dict):
            raise ValueError(f"{key!r}: a search space maps `adactrl train` flag names to samplers, not nested dicts")
        for value in _probe_values(domain):
            try:
                make_config({key: value})
            except (ValueError, TypeError, FileNotFoundError) as err:
                raise ValueError(f"search space {key}={value!r} is not a valid training setting: {err}") from None


def _probe_values(domain: Any) -> list[Any]:
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Integer):
        return [domain.lower, domain.upper - 1]  # randint's upper bound is exclusive
    if isinstance(domain, Float):
        return [v for v in (domain.lower, domain.upper) if math.isfinite(v)] or [domain.sample()]
    if isinstance(domain, Domain):
        return [domain.sample()]
    return [domain]


def reference_reward(records: Sequence[EvalRecord], reference: RewardConfig) -> float:
    """Mean reward of validation inferences re-scored with `reference` coefficients: each record
    carries what its reward needs (accuracy, latency, complexity), and `score` is the one scorer."""
    return statistics.fmean(score(r, r.budget_ms, reference).total for r in records)


class TrialReporter(TrainingObserver):
    """Reports a trial's epochs to Tune: the validation metrics and TUNE_METRIC, the epoch's
    validation records re-scored with the base run's coefficients. The last epoch is reported by
    `train_trial` once `run_training` returns: a stop that Tune sends on a trial's last result
    would otherwise end the process before the summary and the MLflow artifacts are written."""

    def __init__(self, config: TrainConfig, reference: RewardConfig) -> None:
        self.config = config
        self.reference = reference
        self.records: tuple[EvalRecord, ...] = ()
        self.last: dict[str, float] = {}

    def on_validation(self, event: ValidationEvent) -> None:
        self.records = event.records

    def on_epoch_end(self, event: EpochEvent) -> None:
        rescored = reference_reward(self.records, self.reference)
        self.last = {"epoch": event.epoch, TUNE_METRIC: rescored} | event.metrics
        if event.epoch < self.config.num_epochs:
            tune.report(dict(self.last))


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or RAY_ADDRESS), or start a local instance (of `num_cpus` CPUs); True
    when Ray was started here. An address nobody answers on fails in seconds instead of ray.init's
    minutes of retries."""
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target and target != "auto":
        check_reachable(target)
    start_ray(target, num_cpus=num_cpus)  # as `adactrl train` starts or joins one
    return True


def check_reachable(address: str) -> None:
    """A TCP connect to the GCS (host:port) or Ray client (ray://host:port) address."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "ray"):
        raise ValueError(
            f"{address} is not a Ray cluster address: use the head's GCS address host:6379 (or ray://host:10001); "
            "the dashboard's http:// address is for `ray job submit`"
        )
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} must be host:port, e.g. 10.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConnectionError(
            f"cannot reach a Ray cluster at {address} ({err}): start one with `ray start --head`, "
            "or fix --ray_address / RAY_ADDRESS"
        ) from None


def trial_bundles(config: TrainConfig, gpus: float) -> list[dict[str, float]]:
    """Bundle 0 runs the trial's driver; bundle 1 its learner, bundles 2.. its rollout workers."""
    return [{"CPU": 1.0}] + actor_bundles(config, gpus)


def search_cpus(config: TrainConfig) -> int:
    """CPUs a local instance started for the search declares: at least one trial's."""
    return local_cpus(trial_bundles(config, 0))


def check_feasible(bundles: list[dict[str, float]]) -> None:
    """Fail now if the cluster cannot hold one trial's placement group (Tune would wait forever)."""
    total = ray.cluster_resources()
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    short = {k: v for k, v in need.items() if total.get(k, 0.0) < v}
    unplaceable = [b for b in bundles if not any(all(n.get(k, 0.0) >= v for k, v in b.items()) for n in nodes)]
    if short or unplaceable:
        have = {k: total.get(k, 0.0) for k in need}
        raise ValueError(
            f"one trial reserves {need} (1 CPU for its driver, {bundles[1]} for its learner, one bundle "
            f"{bundles[-1]} per rollout worker) but "
            f"the cluster has {have}" + (f" and no node fits {unplaceable[0]}" if unplaceable else "")
            + ": lower --num_workers, --worker_cpus or --learner_cpus for the base run, or add nodes"
        )


def absolute_tracking_uri(uri: str | None) -> str:
    """Trials run in their own working directories: a relative SQLite store becomes absolute."""
    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri:  # a plain directory path: MLflow's file store
        return str(Path(uri).resolve())
    return uri


@dataclass(frozen=True)
class SearchSettings:
    name: str
    """The search's name (the config file's stem): Tune's experiment and the trials' prefix."""
    output_dir: str
    num_samples: int
    tracking_uri: str | None = None
    experiment: str = "adactrl-tune"
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: 1/reduction_factor of the trials reaching a rung continue past it."""
    max_concurrent_trials: int | None = None
    seed: int = 0
    """Seeds the sampling of the trials' configurations."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ValueError(f"grace_period must be >= 1 and reduction_factor >= 2, got "
                             f"{self.grace_period} and {self.reduction_factor}")  # fmt: skip
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"max_concurrent_trials must be >= 1, got {self.max_concurrent_trials}")


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    params: dict[str, Any]
    best_val_reward: float
    """The best TUNE_METRIC over the trial's epochs (nan when it reported none)."""
    epochs: int
    status: str
    """finished, stopped (by ASHA) or error."""
    output_dir: str
    mlflow_run_id: str | None
    error: str | None = None


@dataclass(frozen=True)
class SearchOutcome:
    best: TrialSummary
    trials: list[TrialSummary]
    output_dir: Path
    tracking_uri: str


def run_search(space: dict[str, Any], make_config: MakeConfig, settings: SearchSettings) -> SearchOutcome:
    """Run the search on the connected Ray cluster; write trials.csv and best_config.json."""
    check_search_space(space, make_config)
    base = make_config({})
    bundles = trial_bundles(base, ray.cluster_resources().get("GPU", 0))
    check_feasible(bundles)
    output_dir = Path(settings.output_dir).resolve()
    tracking_uri = absolute_tracking_uri(settings.tracking_uri)
    trainable = tune.with_parameters(
        train_trial, make_config=make_config, reference=base.reward, output_dir=str(output_dir / "trials"),
        tracking_uri=tracking_uri, experiment=settings.experiment, search=settings.name,
    )  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(trainable, tune.PlacementGroupFactory(bundles, strategy="PACK")),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=TUNE_METRIC, mode="max", num_samples=settings.num_samples,
            max_concurrent_trials=settings.max_concurrent_trials,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=base.num_epochs,
                                    grace_period=min(settings.grace_period, base.num_epochs),
                                    reduction_factor=settings.reduction_factor),
            search_alg=BasicVariantGenerator(random_state=settings.seed),
        ),
        run_config=tune.RunConfig(name=settings.name, storage_path=str(output_dir / "tune"), verbose=1),
    )  # fmt: skip
    grid = tuner.fit()
    trials = [_summarize_trial(result, base.num_epochs) for result in grid]
    trials = _close_mlflow_runs(trials, tracking_uri, settings)
    ranked = [t for t in trials if not math.isnan(t.best_val_reward)]
    if not ranked:
        raise RuntimeError(f"no trial reported a validation reward; first error: {trials[0].error}")
    best = max(ranked, key=lambda t: t.best_val_reward)
    _write_results(output_dir, trials, best)
    return SearchOutcome(best, trials, output_dir, tracking_uri)


def train_trial(
    params: dict[str, Any], *, make_config: MakeConfig, reference: RewardConfig, output_dir: str, tracking_uri: str,
    experiment: str, search: str,
) -> None:
    """One trial: a training run whose learner and workers sit in bundles 1.. of the trial's group."""
    name = f"{search}-{tune.get_context().get_trial_id()}"
    config = replace(make_config(params), output_dir=str(Path(output_dir) / name),
                     mlflow_tracking_uri=tracking_uri, mlflow_experiment=experiment)  # fmt: skip
    reporter = TrialReporter(config, reference)
    placement = Placement(ray.util.get_current_placement_group(), first=1)
    run_training(config, observers=[TrainingDashboard(name), reporter], placement=placement)
    tune.report(reporter.last)


def _summarize_trial(result: Any, num_epochs: int) -> TrialSummary:
    history = result.metrics_dataframe
    rewards = history[TUNE_METRIC].tolist() if history is not None and TUNE_METRIC in history else []
    epochs = len(rewards)
    status = "error" if result.error is not None else ("finished" if epochs >= num_epochs else "stopped")
    trial_id = result.metrics.get("trial_id") or Path(result.path).name
    return TrialSummary(
        trial_id=trial_id, params=dict(result.config), best_val_reward=max(rewards) if rewards else math.nan,
        epochs=epochs, status=status, output_dir="", mlflow_run_id=None,
        error=None if result.error is None else str(result.error).strip().splitlines()[-1],
    )  # fmt: skip


def _close_mlflow_runs(trials: list[TrialSummary], tracking_uri: str, settings: SearchSettings) -> list[TrialSummary]:
    """Find each trial's run (named after its output directory), tag it with the search, and mark
    the runs of trials ASHA stopped as KILLED: Tune ends those processes mid-epoch."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    trials_dir = Path(settings.output_dir).resolve() / "trials"
    closed = []
    for trial in trials:
        name = f"{settings.name}-{trial.trial_id}"
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'", max_results=1)
        run_id = runs[0].info.run_id if runs else None
        if run_id is not None:
            client.set_tag(run_id, "adactrl.tune.search", settings.name)
            client.set_tag(run_id, "adactrl.tune.trial_id", trial.trial_id)
            client.set_tag(run_id, "adactrl.tune.status", trial.status)
            if trial.status == "stopped" and runs[0].info.status != "FINISHED":
                # The run ended before `run_training` logged its files: log what the epochs left.
                for path in (trials_dir / name / artifact for artifact in STOPPED_TRIAL_ARTIFACTS):
                    if path.is_file():
                        client.log_artifact(run_id, str(path))
                client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))
        closed.append(replace(trial, output_dir=str(trials_dir / name), mlflow_run_id=run_id))
    return closed


def _write_results(output_dir: Path, trials: list[TrialSummary], best: TrialSummary) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for t in trials for k in t.params})
    with atomic_path(output_dir / RESULTS_FILE) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", "epochs", "best_val_reward", *keys, "mlflow_run_id", "output_dir"])
        for t in trials:
            writer.writerow([t.trial_id, t.status, t.epochs, t.best_val_reward, *(t.params.get(k) for k in keys),
                             t.mlflow_run_id, t.output_dir])  # fmt: skip
    write_text(output_dir / BEST_FILE, json.dumps(asdict(best), indent=2, default=str) + "\n")
