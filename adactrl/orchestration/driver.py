"""The driver of `adactrl train`: composes the learner, the rollout workers and the training loop.

It loads the model (so a bad path fails before Ray starts), builds or resumes the run's state
(refusing a resume whose training settings differ from the checkpoint's), starts the backend
(Ray actors by default, in-process objects with `local=True`), runs the Trainer over it, then the
static Pareto oracle, the summary, and the run's plots.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adactrl.atomic import write_text
from adactrl.controller import Controller, ControllerConfig, load_controller
from adactrl.data import check_datasets
from adactrl.training.checkpoints import (
    BEST_MODEL,
    TrainerState,
    load_newest_checkpoint,
)
from adactrl.training.config import TrainConfig, WorkerConfig
from adactrl.training.events import TrainingObserver
from adactrl.training.loop import Backend, Trainer, split_evenly
from adactrl.training.outputs import (
    LOG_FILE,
    TRAINING_HISTORY,
    VALIDATION_HISTORY,
    BudgetPoint,
    RunRecorder,
    budget_point,
    budget_points,
    run_tags,
)
from adactrl.training.rollout import EstimatedRunLatency, LatencyFn, measured_latency
from adactrl.training.summary import format_summary, static_oracle
from learner import Learner
from rollout_workers import RolloutWorker, load_model

log = logging.getLogger("adactrl.train")
SUMMARY_FILE = "summary.json"
NOT_TRAINING_SETTINGS = frozenset({
    "output_dir", "resume", "allow_config_change", "num_epochs", "oracle_samples", "mlflow_tracking_uri",
    "mlflow_experiment", "ray_address", "worker_cpus", "learner_cpus", "latency_estimator", "max_model_runs",
    "algorithm",
})  # fmt: skip
"""Settings a resumed run may change freely: where outputs go, how long it runs, what it
reserves. (The estimator's path may move; `_check_resumed_latency` warns about it. Only GRPO runs
resume, so `algorithm` is always the same; runs from before it existed do not record it.)"""


@dataclass(frozen=True)
class TrainOutcome:
    state: TrainerState
    summary: dict[str, Any]
    output_dir: Path
    run_id: str
    tracking_uri: str
    wall_s: float


def run_training(
    config: TrainConfig,
    *,
    local: bool = False,
    latency_fn: LatencyFn = measured_latency,
    observers: Sequence[TrainingObserver] = (),
    backend_hook: Callable[[Backend], None] | None = None,
    placement: Any = None,
    worker_class: type = RolloutWorker,
) -> TrainOutcome:
    """Train, validate every epoch, checkpoint, then print and return the summary.

    local=True runs the workers and the learner in this process; with a deterministic `latency_fn`
    (the measured latency, which the reward sees unless config.latency_mode is "estimated") a run
    is then reproducible (the resume tests), and so is a Ray run: the schedule does not depend on
    timing. `observers` subscribe to the run's events (the dashboard, a Tune trial's reporting);
    `backend_hook(backend)` runs once the actors exist (tests use it to find or kill them).
    `placement` (a `ray_backend.Placement`) puts the actors in a group the caller reserved;
    `worker_class` replaces the rollout worker (benchmarks/scaling.py's simulated one).
    `config.algorithm` "ppo" hands the run to RLlib's PPO (adactrl.orchestration.ppo).
    """
    if config.algorithm == "ppo":
        from adactrl.orchestration.ppo import run_ppo_training

        return run_ppo_training(config, latency_fn=latency_fn, observers=observers)
    began = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(config.model_path, config.importance_scores_file)
    data = config.data  # a missing or malformed dataset fails here, with its message, before Ray starts
    check_datasets(data.dataset_names, {"train": data.num_train_samples, "validation": data.num_val_samples},
                   data.seed, data_dir=data.data_dir)  # fmt: skip
    estimator = None if config.latency_estimator is None else str(Path(config.latency_estimator).resolve())
    if estimator is not None:
        EstimatedRunLatency.load(estimator, model.knob_space)  # an unusable file fails here, before any rollout
    controller, learner_state, state = _initial_state(config, model, estimator)
    worker_config = WorkerConfig(
        controller=controller.config, data=config.data, reward=config.reward, model_path=config.model_path,
        importance_scores_file=config.importance_scores_file, max_new_tokens=config.max_new_tokens,
        latency_mode=config.latency_mode, latency_estimator=estimator,
    )  # fmt: skip
    recorder = RunRecorder(
        output_dir, tracking_uri=config.mlflow_tracking_uri, experiment=config.mlflow_experiment,
        run_id=state.mlflow_run_id, run_name=output_dir.name,
        tags=run_tags(config.model_path, config.data.dataset_names),
    )  # fmt: skip
    ok = False
    try:
        if state.mlflow_run_id is None:
            recorder.log_params(config.to_params() | {"model.d_model": model.hidden_size,
                                                      "model.knob_space": json.dumps(model.knob_space.to_dict())})
        else:
            recorder.train_history.truncate(state.step)
            recorder.val_history.truncate(state.epoch)
            log.info("resuming after epoch %d (step %d)", state.epoch, state.step)
        state.mlflow_run_id = recorder.run_id
        with _backend(config, worker_config, controller, learner_state, local=local, latency_fn=latency_fn,
                      placement=placement, worker_class=worker_class) as backend:  # fmt: skip
            if backend_hook is not None:
                backend_hook(backend)
            sizes = backend.split_sizes()
            trainer = Trainer(config, backend, recorder, controller, split_sizes=sizes, state=state,
                              observers=observers)  # fmt: skip
            state = trainer.run()
            summary, oracle = _summarize(config, trainer, model.knob_space, sizes["validation"])
        summary["wall_s"] = time.perf_counter() - began
        write_outputs(recorder, summary, trainer.best_records, oracle)
        ok = True
        return TrainOutcome(state, summary, output_dir, recorder.run_id, recorder.tracking_uri,
                            time.perf_counter() - began)  # fmt: skip
    finally:
        recorder.finish(ok)


def write_outputs(
    recorder: RunRecorder, summary: dict[str, Any], best_records: Sequence[Any], oracle: list[BudgetPoint]
) -> None:
    """summary.json, the summary table (console and log), budget_curves.png of the best epoch's
    validation records, and the run's files as MLflow artifacts: the end of every training run."""
    output_dir = recorder.output_dir
    write_text(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    print(summary["table"], flush=True)
    log.info("summary\n%s", summary["table"])
    if best_records:
        recorder.log_budget_curves(budget_points(best_records), oracle)
    recorder.log_artifacts(output_dir / name for name in
                           (TRAINING_HISTORY, VALIDATION_HISTORY, BEST_MODEL, SUMMARY_FILE, LOG_FILE))


@contextmanager
def _backend(
    config: TrainConfig, worker_config: WorkerConfig, controller: Controller, learner_state: dict | None, *,
    local: bool, latency_fn: LatencyFn, placement: Any, worker_class: type,
) -> Iterator[Backend]:  # fmt: skip
    if local:
        from adactrl.orchestration.local import LocalBackend

        learner = Learner(copy.deepcopy(controller), config.learner)
        if learner_state is not None:
            learner.load_state_dict(learner_state)
        workers = [worker_class(worker_config, i, latency_fn=latency_fn) for i in range(config.num_workers)]
        yield LocalBackend(workers, learner)
        return
    from adactrl.orchestration.ray_backend import ray_backend

    with ray_backend(config, worker_config, controller, learner_state, latency_fn=latency_fn,
                     placement=placement, worker_class=worker_class) as backend:  # fmt: skip
        yield backend


def _initial_state(
    config: TrainConfig, model: Any, estimator: str | None
) -> tuple[Controller, dict | None, TrainerState]:
    fresh = TrainerState(latency_mode=config.latency_mode, latency_estimator=estimator, config=config.to_params())
    if config.resume:
        path, controller, learner_state, state = load_newest_checkpoint(
            Path(config.output_dir), model.knob_space, model.hidden_size)  # fmt: skip
        _check_resumed_latency(path, state, fresh)
        check_resumed_config(path, state.config, fresh.config, allow_change=config.allow_config_change)
        state.config = fresh.config
        return controller, learner_state, state
    if config.load_checkpoint is not None:
        controller, _ = load_controller(
            config.load_checkpoint, expected_knob_space=model.knob_space, expected_d_model=model.hidden_size
        )
        return controller, None, fresh
    return Controller(ControllerConfig(d_model=model.hidden_size, seed=config.seed), model.knob_space), None, fresh


def check_resumed_config(path: Path, saved: dict[str, Any], wanted: dict[str, Any], *, allow_change: bool) -> None:
    """Refuse a resume whose training settings differ from the checkpoint's, naming each one,
    unless `allow_change` (--allow_config_change); then they are only logged."""
    if not saved:
        log.warning("%s records no run settings (written before they were kept); resuming unchecked", path.name)
        return
    keys = sorted((set(saved) | set(wanted)) - NOT_TRAINING_SETTINGS)
    changed = [f"--{key.rsplit('.', 1)[-1]} {saved.get(key)} (now {wanted.get(key)})"
               for key in keys if str(saved.get(key)) != str(wanted.get(key))]  # fmt: skip
    if not changed:
        return
    if allow_change:
        log.warning("--resume --allow_config_change: continuing %s with changed settings: %s", path.name,
                    ", ".join(changed))  # fmt: skip
        return
    raise ValueError(
        f"--resume: {path} was trained with other settings: {', '.join(changed)}. Resume with the run's own "
        "flags, add --allow_config_change to continue with the new ones, or start a new run in another --output_dir"
    )


def _check_resumed_latency(path: Path, state: TrainerState, wanted: TrainerState) -> None:
    """A resumed run keeps the latency its reward was computed with; another estimator file is only
    warned about (it may be the same estimator, moved), and recorded from then on."""
    if state.latency_mode != wanted.latency_mode:
        flags = f"--latency_mode {state.latency_mode}"
        if state.latency_estimator is not None:
            flags += f" --latency_estimator {state.latency_estimator}"
        raise ValueError(
            f"--resume: {path} was trained with --latency_mode {state.latency_mode}, not {wanted.latency_mode}; "
            f"resume with {flags}, or start a new run in another --output_dir"
        )
    if state.latency_estimator != wanted.latency_estimator:
        log.warning("resuming with --latency_estimator %s; the run so far used %s",
                    wanted.latency_estimator, state.latency_estimator)
        state.latency_estimator = wanted.latency_estimator


def _summarize(
    config: TrainConfig, trainer: Trainer, knob_space: Any, n_val: int
) -> tuple[dict[str, Any], list[BudgetPoint]]:
    """The summary (with the static oracle over `oracle_samples` validation samples) and the
    oracle's per-budget points for budget_curves.png."""
    state, budgets, backend = trainer.state, trainer.val_budgets, trainer.backend
    rows = {"untrained controller": state.untrained_val,
            f"trained controller (epoch {state.best_epoch})": state.best_val}  # fmt: skip
    oracle_plans: dict[str, str] = {}
    points: list[BudgetPoint] = []
    n = min(config.oracle_samples, n_val)
    if n > 0:
        records = backend.sweep(split_evenly(list(range(n)), backend.num_workers))
        if records:
            metrics, chosen = static_oracle(records, budgets, config.reward)
            rows["static Pareto oracle"] = metrics
            oracle_plans = {f"{b:.3f}": plan for b, plan in chosen.items()}
            points = [budget_point(b, [r for r in records if r.plan == plan]) for b, plan in chosen.items()]
    table = format_summary(rows, budgets)
    summary = {
        "table": table, "rows": rows, "val_budgets_ms": list(budgets), "oracle_plans": oracle_plans,
        "budget_range": trainer.budget_range.to_dict(), "best_epoch": state.best_epoch,
        "steps": state.step, "policy_version": trainer.weights.version, "worker_restarts": state.worker_restarts,
        "learner_restarts": state.learner_restarts, "latency_mode": config.latency_mode,
    }  # fmt: skip
    return summary, points
