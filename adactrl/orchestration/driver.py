"""The driver of `adactrl train`: the one module of the core library that imports Ray.

It loads the model (so a bad path fails before Ray starts), builds or resumes the learner,
places one rollout worker per placement-group bundle (a GPU each where the cluster has enough,
a CPU otherwise), runs the shared training loop over them, then the static Pareto oracle and
the summary. `run_training(..., local=True)` runs the same loop with in-process workers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from adactrl.controller import Controller, ControllerConfig, load_controller
from adactrl.training.checkpoints import (
    BEST_MODEL,
    TrainerState,
    latest_checkpoint,
    load_training_checkpoint,
)
from adactrl.training.config import TrainConfig, WorkerConfig
from adactrl.training.loop import LocalBackend, Trainer, split_evenly
from adactrl.training.outputs import LOG_FILE, TRAINING_HISTORY, VALIDATION_HISTORY, RunRecorder, run_tags
from adactrl.training.records import RolloutBatch, RolloutRequest, WeightsRef
from adactrl.training.rollout import EstimatedRunLatency, LatencyFn, measured_latency
from adactrl.training.summary import format_summary, static_oracle
from learner import Learner
from rollout_workers import RolloutWorker, load_model

log = logging.getLogger("adactrl.train")
MAX_RESTARTS = 2
RECOVERY_TIMEOUT_S = 120.0
"""How long the driver waits for Ray to bring a dead worker back before dropping it."""
PLACEMENT_TIMEOUT_S = 60.0
RAY_START_ATTEMPTS = 3
SUMMARY_FILE = "summary.json"


class RayBackend:
    """Rollout workers as Ray actors. When a call fails because its worker went away, the driver
    waits for Ray to restart the actor, re-sends the newest weights and re-issues the work; a
    restart (a new process id) is counted and logged. A worker Ray gives up on is dropped and its
    work goes to the others."""

    def __init__(self, actors: Sequence[Any]) -> None:
        self.actors = list(actors)
        self.num_workers = len(self.actors)
        self.restarts = 0
        self._pids = ray.get([actor.ping.remote() for actor in self.actors])
        self._dead = [False] * self.num_workers
        self._versions = [-1] * self.num_workers
        self._latest: WeightsRef | None = None
        self._in_flight: dict[ray.ObjectRef, tuple[int, RolloutRequest]] = {}

    def publish(self, weights: WeightsRef) -> WeightsRef:
        """Put the state in the object store once; every worker pulls it from there."""
        self._latest = WeightsRef(weights.version, ray.put(weights.state))
        return self._latest

    def submit(self, worker: int, request: RolloutRequest, weights: WeightsRef) -> None:
        worker = self._route(worker)
        self._send_weights(worker, weights)
        self._in_flight[self.actors[worker].rollout.remote(request)] = (worker, request)

    def wait(self) -> tuple[int, RolloutBatch]:
        while True:
            ref = _next_ready(list(self._in_flight))
            worker, request = self._in_flight.pop(ref)
            try:
                return worker, ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self._recover(worker, err, f"rollout request {request.request_id} of epoch {request.epoch}")
                assert self._latest is not None
                self.submit(worker, replace(request, policy_version=self._latest.version), self._latest)

    def run_all(self, method: str, args: Sequence[tuple | None], weights: WeightsRef | None) -> list:
        """Call `method` on every worker with its args (None skips one); results in worker order."""
        pending: dict[ray.ObjectRef, tuple[int, int, tuple]] = {}

        def call(slot: int, worker: int, call_args: tuple) -> None:
            worker = self._route(worker)
            if weights is not None:
                self._send_weights(worker, weights)
            pending[getattr(self.actors[worker], method).remote(*call_args)] = (slot, worker, call_args)

        for worker, call_args in enumerate(args):
            if call_args is not None:
                call(worker, worker, call_args)
        results: dict[int, Any] = {}
        while pending:
            ref = _next_ready(list(pending))
            slot, worker, call_args = pending.pop(ref)
            try:
                results[slot] = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self._recover(worker, err, f"{method} call")
                call(slot, worker, call_args)
        return [results[slot] for slot in sorted(results)]

    def _send_weights(self, worker: int, weights: WeightsRef) -> None:
        if self._versions[worker] != weights.version:
            self.actors[worker].load_weights.remote(weights.version, weights.state)
            self._versions[worker] = weights.version

    def _route(self, worker: int) -> int:
        if not self._dead[worker]:
            return worker
        alive = [w for w in range(self.num_workers) if not self._dead[w]]
        if not alive:
            raise RuntimeError("every rollout worker died and Ray gave up restarting them; stopping")
        return min(alive, key=lambda w: sum(1 for v, _ in self._in_flight.values() if v == w))

    def _recover(self, worker: int, err: Exception, what: str) -> None:
        """Wait until the worker answers again; a new process id means Ray restarted it."""
        self._versions[worker] = -1
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while True:
            try:
                pid = ray.get(self.actors[worker].ping.remote())
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    pid = None
                    break
                time.sleep(0.5)
            except ray.exceptions.ActorDiedError:
                pid = None
                break
        if pid is None:
            self._dead[worker] = True
            log.error("rollout worker %d died during %s (%s) and did not come back; its work goes to the others",
                      worker, what, type(err).__name__)
        elif pid != self._pids[worker]:
            self._pids[worker] = pid
            self.restarts += 1
            log.warning("rollout worker %d died during %s (%s); Ray restarted it (restart %d in this run), "
                        "re-issuing the work with the newest weights", worker, what, type(err).__name__, self.restarts)
        else:
            log.warning("rollout worker %d was briefly unreachable during %s (%s); re-issuing the work",
                        worker, what, type(err).__name__)


def _next_ready(refs: list[ray.ObjectRef]) -> ray.ObjectRef:
    # Short waits in a loop: a blocking ray.wait would not let Ctrl-C through until a task ends.
    while True:
        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        if ready:
            return ready[0]


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
    on_batch: Callable[[int], None] | None = None,
    backend_hook: Callable[[Any], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    worker_bundles: tuple[PlacementGroup, int] | None = None,
) -> TrainOutcome:
    """Train, validate every epoch, checkpoint, then print and return the summary.

    local=True runs the workers in this process in a fixed order; with a deterministic
    `latency_fn` (the measured latency, which the reward sees unless config.latency_mode is
    "estimated") the whole run is then reproducible: the resume test. `on_batch(step)` runs after every learner update and `backend_hook(backend)` once the
    workers exist (tests use them to watch weights and to kill a worker).
    `on_epoch_end(epoch, val_metrics)` runs after each epoch's validation and checkpoint (a Tune
    trial reports there). `worker_bundles=(group, first)` places the workers in bundles
    first..first+num_workers-1 of a placement group that is already reserved (a Tune trial's).
    """
    began = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(config.model_path, config.importance_scores_file)
    estimator = None if config.latency_estimator is None else str(Path(config.latency_estimator).resolve())
    if estimator is not None:
        EstimatedRunLatency.load(estimator, model.knob_space)  # an unusable file fails here, before any rollout
    controller, learner_state, state = _initial_state(config, model, estimator)
    learner = Learner(controller, config.learner)
    if learner_state is not None:
        learner.load_state_dict(learner_state)
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
            log.info("resuming after epoch %d (step %d, policy version %d)", state.epoch, state.step, learner.version)
        state.mlflow_run_id = recorder.run_id
        with rollout_backend(config, worker_config, local=local, latency_fn=latency_fn,
                             worker_bundles=worker_bundles) as backend:
            if backend_hook is not None:
                backend_hook(backend)
            sizes = backend.run_all("split_sizes", [()] + [None] * (backend.num_workers - 1), None)[0]
            trainer = Trainer(config, learner, backend, recorder, split_sizes=sizes, state=state, on_batch=on_batch,
                              on_epoch_end=on_epoch_end)
            state = trainer.run()
            summary = _summarize(config, trainer, backend, model.knob_space, sizes["validation"])
        summary["wall_s"] = time.perf_counter() - began
        (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        print(summary["table"], flush=True)
        log.info("summary\n%s", summary["table"])
        recorder.log_artifacts(output_dir / name for name in
                               (TRAINING_HISTORY, VALIDATION_HISTORY, BEST_MODEL, SUMMARY_FILE, LOG_FILE))
        ok = True
        return TrainOutcome(state, summary, output_dir, recorder.run_id, recorder.tracking_uri,
                            time.perf_counter() - began)  # fmt: skip
    finally:
        recorder.finish(ok)


def _initial_state(
    config: TrainConfig, model: Any, estimator: str | None
) -> tuple[Controller, dict | None, TrainerState]:
    fresh = TrainerState(latency_mode=config.latency_mode, latency_estimator=estimator)
    if config.resume:
        path = latest_checkpoint(Path(config.output_dir))
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint_epoch_N.pt in {config.output_dir}")
        controller, learner_state, state = load_training_checkpoint(path, model.knob_space, model.hidden_size)
        _check_resumed_latency(path, state, fresh)
        return controller, learner_state, state
    if config.load_checkpoint is not None:
        controller, _ = load_controller(
            config.load_checkpoint, expected_knob_space=model.knob_space, expected_d_model=model.hidden_size
        )
        return controller, None, fresh
    return Controller(ControllerConfig(d_model=model.hidden_size, seed=config.seed), model.knob_space), None, fresh


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


@contextmanager
def rollout_backend(
    config: TrainConfig, worker_config: WorkerConfig, *, local: bool = False, latency_fn: LatencyFn = measured_latency,
    worker_bundles: tuple[PlacementGroup, int] | None = None,
) -> Iterator[LocalBackend | RayBackend]:
    """`config.num_workers` rollout workers: in process, or Ray actors in one placement group
    (starting a local Ray instance, or connecting to `config.ray_address`, unless one is up).
    `worker_bundles=(group, first)` uses bundles of a group reserved by the caller instead."""
    if local:
        yield LocalBackend([RolloutWorker(worker_config, i, latency_fn=latency_fn) for i in range(config.num_workers)])
        return
    started = not ray.is_initialized()
    if started:
        start_ray(config.ray_address)
    if worker_bundles is None:
        gpus = ray.cluster_resources().get("GPU", 0)
        gpu_each = 1 if gpus >= config.num_workers else 0
        bundle = {"CPU": 1, "GPU": 1} if gpu_each else {"CPU": 1}
        group, first = placement_group([dict(bundle)] * config.num_workers, strategy="PACK"), 0
    else:
        group, first = worker_bundles
        bundle = group.bundle_specs[first]
        gpu_each = 1 if bundle.get("GPU", 0) >= 1 else 0
    try:
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise RuntimeError(
                f"could not place {config.num_workers} rollout workers of {bundle} each within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; the cluster has {ray.cluster_resources()}: lower --num_workers"
            )
        worker_config = replace(worker_config, device="cuda" if gpu_each else "cpu")
        remote = ray.remote(RolloutWorker)
        actors = [
            remote.options(
                num_cpus=1, num_gpus=gpu_each, max_restarts=MAX_RESTARTS, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=first + i),
            ).remote(worker_config, i, latency_fn=latency_fn)
            for i in range(config.num_workers)
        ]  # fmt: skip
        log.info("%d rollout workers on %s", len(actors), "GPUs" if gpu_each else "CPUs")
        try:
            yield RayBackend(actors)
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if worker_bundles is None:
            remove_placement_group(group)
        if started:
            ray.shutdown()


def start_ray(address: str | None = None, num_cpus: int | None = None, attempts: int = RAY_START_ATTEMPTS) -> None:
    """Connect to `address`, or start a local instance whose workers run at normal priority.

    Ray nices its workers to 15 by default; rollouts measure latency, so on a shared machine
    they must not yield the CPU to every other process. A local start is retried: Ray 2.60's
    raylet gives its dashboard agent 15 s to come up and aborts when a busy machine makes the
    agent's imports slower than that; a second try finds them in the page cache.
    """
    # Inside a `ray job submit` job, RAY_ADDRESS names the cluster the job runs on.
    address = address or os.environ.get("RAY_ADDRESS")
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     _system_config={"worker_niceness": 0})
            return
        except Exception as err:  # Ray raises a bare Exception for a node that did not start
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            log.warning("the local Ray node did not start in time (attempt %d of %d); retrying", attempt, attempts)
            ray.shutdown()


def _summarize(
    config: TrainConfig, trainer: Trainer, backend: LocalBackend | RayBackend, knob_space: Any, n_val: int
) -> dict[str, Any]:
    state, budgets = trainer.state, trainer.val_budgets
    rows = {"untrained controller": state.untrained_val,
            f"trained controller (epoch {state.best_epoch})": state.best_val}  # fmt: skip
    oracle_plans: dict[str, str] = {}
    n = min(config.oracle_samples, n_val)
    if n > 0:
        chunks = split_evenly(list(range(n)), backend.num_workers)
        records = [r for part in backend.run_all("sweep", [(c,) if c else None for c in chunks], None) for r in part]
        if records:
            metrics, chosen = static_oracle(records, budgets, knob_space, config.reward)
            rows["static Pareto oracle"] = metrics
            oracle_plans = {f"{b:.3f}": plan for b, plan in chosen.items()}
    table = format_summary(rows, budgets)
    return {
        "table": table, "rows": rows, "val_budgets_ms": list(budgets), "oracle_plans": oracle_plans,
        "budget_range": trainer.budget_range.to_dict(), "best_epoch": state.best_epoch,
        "steps": state.step, "policy_version": trainer.learner.version, "worker_restarts": backend.restarts,
        "latency_mode": config.latency_mode,
    }  # fmt: skip
