"""The Ray backend: rollout workers and the learner as actors in one placement group.

Bundle 0 of the group holds the learner (a GPU where the cluster has one beyond the workers', a
CPU otherwise), bundles 1..N one rollout worker each. The driver moves refs, never rollout data:
a worker answers a request with a small receipt plus its batch as a separate object; the driver
reads the receipt and passes the batch's ref to the learner, in request order. The learner steps
the optimizer, `ray.put`s each new weight version once and answers with (version, ref); a worker
pulls a version from the object store when the driver sends it that ref with its next request.

Faults: a rollout worker that dies is restarted by Ray (max_restarts) and its request re-issued
with the same weights; one Ray gives up on is dropped and its work goes to the others. Every call
that needs weights carries them, so a worker Ray restarted between two calls (before the driver
noticed) still runs the next one on the right weights; restarts are counted from Ray's actor
table, so a worker killed twice counts twice whenever the driver looks. A learner
that dies raises `LearnerLost`; `restart_learner` starts a new one in the same bundle from a
checkpoint's state, and the loop replays the epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from adactrl.controller import Controller
from adactrl.orchestration.learner_actor import LearnerActor
from adactrl.profiling import SweepRecord
from adactrl.training.config import TrainConfig, WorkerConfig
from adactrl.training.loop import LearnerLost, LearnerSnapshot, RolloutDone, Updated
from adactrl.training.records import (
    CalibrationResult,
    EvalBatch,
    EvalRequest,
    RolloutRequest,
    WeightsRef,
)
from adactrl.training.rollout import LatencyFn, measured_latency
from rollout_workers import RolloutWorker

log = logging.getLogger("adactrl.train")
MAX_RESTARTS = 2
"""Ray restarts a dead rollout worker this many times."""
RECOVERY_TIMEOUT_S = 120.0
"""How long the driver waits for Ray to bring a dead worker back before dropping it."""
PLACEMENT_TIMEOUT_S = 60.0
RAY_START_ATTEMPTS = 3
LEARNER_BUNDLE = 0


@dataclass(frozen=True)
class Placement:
    """Where the actors go: the learner in bundle `first` of `group`, worker i in bundle first + 1 + i."""

    group: PlacementGroup
    first: int = 0


def actor_bundles(config: TrainConfig, gpus: float) -> list[dict[str, float]]:
    """[learner, worker x N]: workers take a GPU each where the cluster has one per worker, the
    learner one where a GPU is left over."""
    gpu_each = 1 if gpus >= config.num_workers else 0
    learner_gpu = 1 if gpus - gpu_each * config.num_workers >= 1 else 0
    learner = {"CPU": config.learner_cpus} | ({"GPU": 1.0} if learner_gpu else {})
    worker = {"CPU": config.worker_cpus} | ({"GPU": 1.0} if gpu_each else {})
    return [learner] + [dict(worker) for _ in range(config.num_workers)]


class RayBackend:
    """`adactrl.training.loop.Backend` on Ray actors. Build it with `ray_backend(...)`."""

    def __init__(
        self, workers: Sequence[Any], placement: Placement, controller: Controller, config: TrainConfig,
        learner_state: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        self.actors = list(workers)
        self.num_workers = len(self.actors)
        self.learner_restarts = 0
        self._placement = placement
        self._controller = controller
        self._config = config
        self._pids = ray.get([actor.ping.remote() for actor in self.actors])
        self._dead = [False] * self.num_workers
        self._in_flight: dict[ray.ObjectRef, tuple[int, RolloutRequest, WeightsRef, ray.ObjectRef]] = {}
        self._batches: dict[int, ray.ObjectRef] = {}
        self._updates: dict[ray.ObjectRef, int] = {}
        self.learner = self._start_learner(controller, learner_state)
        self.learner_pid = self._learner_call(self.learner.ping.remote())
        self._weights: WeightsRef = self._learner_call(self.learner.weights.remote())

    @property
    def worker_restarts(self) -> int:
        """Ray's restarts of this run's rollout workers, each counted however soon it came after
        another (`ray._private.state`: Ray 2.60 has no public call that reads the count without
        the dashboard)."""
        return sum(int(ray._private.state.actors(actor._actor_id.hex()).get("NumRestarts", 0))
                   for actor in self.actors)  # fmt: skip

    def split_sizes(self) -> dict[str, int]:
        return self._call_each([(0, lambda actor: actor.split_sizes.remote())])[0]

    def calibrate(self, sample_indices: tuple[int, ...]) -> list[CalibrationResult]:
        calls = [(w, lambda actor: actor.calibrate.remote(sample_indices)) for w in range(self.num_workers)]
        return self._call_each(calls)

    def set_budget_range(self, low_ms: float, high_ms: float) -> WeightsRef:
        self._weights = self._learner_call(self.learner.set_budget_range.remote(low_ms, high_ms))
        return self._weights

    def weights(self) -> WeightsRef:
        return self._weights

    def evaluate(self, requests: Sequence[EvalRequest | None], weights: WeightsRef) -> list[EvalBatch]:
        calls = [(w, lambda actor, r=r: actor.evaluate.remote(r, weights.version, weights.state))
                 for w, r in enumerate(requests) if r is not None]  # fmt: skip
        return self._call_each(calls)

    def sweep(self, chunks: Sequence[tuple[int, ...]]) -> list[SweepRecord]:
        calls = [(w, lambda actor, c=c: actor.sweep.remote(c)) for w, c in enumerate(chunks) if c]
        return [r for part in self._call_each(calls) for r in part]

    def submit(self, worker: int, request: RolloutRequest, weights: WeightsRef) -> None:
        worker = self._route(worker)
        # The weights travel with every request (the worker resolves their ref before it runs and
        # loads them: about a millisecond for the controller). Sending them only to a worker that
        # lacked them broke when Ray restarted it between two requests, before the driver knew.
        call = self.actors[worker].rollout_with_receipt.options(num_returns=2)
        receipt, batch = call.remote(request, weights.version, weights.state)
        self._in_flight[receipt] = (worker, request, weights, batch)

    def learn(self, request_id: int) -> None:
        # The ref inside a list: the learner fetches it, and Ray keeps the calls in request order.
        self._updates[self.learner.update.remote([self._batches.pop(request_id)])] = request_id

    def wait(self) -> RolloutDone | Updated:
        while True:
            # Only the oldest update is waited on: the learner runs them in request order, and the
            # loop must see them in that order (ray.wait may report later ones first).
            ref = _next_ready([*list(self._updates)[:1], *self._in_flight])
            if ref in self._updates:
                del self._updates[ref]
                updated = self._learner_call(ref)
                self._weights = updated.weights
                return updated
            worker, request, weights, batch = self._in_flight.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self._recover(worker, err, f"rollout request {request.request_id} of epoch {request.epoch}")
                self.submit(worker, request, weights)
                continue
            except Exception:
                self._check_learner()  # the weights it was sent died with their owner, the learner
                raise
            self._batches[request.request_id] = batch
            return RolloutDone(worker, request.request_id)

    def scheduler_step(self, val_reward: float) -> None:
        self._learner_call(self.learner.scheduler_step.remote(val_reward))

    def learner_snapshot(self) -> LearnerSnapshot:
        return self._learner_call(self.learner.snapshot.remote())

    def restart_learner(self, snapshot: LearnerSnapshot) -> WeightsRef:
        """A new learner actor in the same bundle, from `snapshot`; all outstanding work is dropped
        (the workers finish what they hold; nobody reads it)."""
        ray.kill(self.learner)
        self._in_flight.clear()
        self._batches.clear()
        self._updates.clear()
        controller = copy.deepcopy(self._controller)
        controller.load_state_dict(snapshot.controller_state)
        self.learner = self._start_learner(controller, snapshot.learner_state)
        self.learner_restarts += 1
        self.learner_pid = self._learner_call(self.learner.ping.remote())
        self._weights = self._learner_call(self.learner.weights.remote())
        log.warning("started a new learner (process %d, restart %d in this run) at policy version %d",
                    self.learner_pid, self.learner_restarts, self._weights.version)  # fmt: skip
        return self._weights

    def _start_learner(self, controller: Controller, learner_state: dict[str, Any] | None) -> Any:
        bundle = self._placement.group.bundle_specs[self._placement.first + LEARNER_BUNDLE]
        gpu = 1 if bundle.get("GPU", 0) >= 1 else 0
        strategy = PlacementGroupSchedulingStrategy(self._placement.group,
                                                    placement_group_bundle_index=self._placement.first)  # fmt: skip
        remote = ray.remote(LearnerActor).options(num_cpus=bundle["CPU"], num_gpus=gpu, max_restarts=0,
                                                  scheduling_strategy=strategy)  # fmt: skip
        threads = max(1, int(bundle["CPU"]))
        return remote.remote(controller, self._config.learner, learner_state, "cuda" if gpu else "cpu", threads)

    def _learner_call(self, ref: ray.ObjectRef) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            raise LearnerLost(f"{type(err).__name__}: the learner actor died") from err

    def _check_learner(self) -> None:
        try:
            ray.get(self.learner.ping.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
            raise LearnerLost(f"{type(err).__name__}: the learner actor is gone") from err

    def _call_each(self, calls: list[tuple[int, Callable[[Any], ray.ObjectRef]]]) -> list:
        """One call per (worker, call) pair; results in the calls' order. A call whose worker
        died is re-issued once Ray has restarted it (or on another worker)."""
        pending: dict[ray.ObjectRef, tuple[int, int]] = {}

        def start(slot: int, worker: int) -> None:
            worker = self._route(worker)
            pending[calls[slot][1](self.actors[worker])] = (slot, worker)

        for slot, (worker, _) in enumerate(calls):
            start(slot, worker)
        results: dict[int, Any] = {}
        while pending:
            ref = _next_ready(list(pending))
            slot, worker = pending.pop(ref)
            try:
                results[slot] = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self._recover(worker, err, "a call")
                start(slot, worker)
        return [results[slot] for slot in range(len(calls))]

    def _route(self, worker: int) -> int:
        if not self._dead[worker]:
            return worker
        alive = [w for w in range(self.num_workers) if not self._dead[w]]
        if not alive:
            raise RuntimeError("every rollout worker died and Ray gave up restarting them; stopping")
        return min(alive, key=lambda w: sum(1 for v, *_ in self._in_flight.values() if v == w))

    def _recover(self, worker: int, err: Exception, what: str) -> None:
        """Wait until the worker answers again; a new process id means Ray restarted it."""
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
            log.warning("rollout worker %d died during %s (%s); Ray restarted it (restart %d in this run), "
                        "re-issuing the work", worker, what, type(err).__name__, self.worker_restarts)
        else:
            log.warning("rollout worker %d was briefly unreachable during %s (%s); re-issuing the work",
                        worker, what, type(err).__name__)


def _next_ready(refs: list[ray.ObjectRef]) -> ray.ObjectRef:
    # Short waits in a loop: a blocking ray.wait would not let Ctrl-C through until a task ends.
    while True:
        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        if ready:
            return ready[0]


@contextmanager
def ray_backend(
    config: TrainConfig, worker_config: WorkerConfig, controller: Controller, learner_state: dict[str, Any] | None,
    *, latency_fn: LatencyFn = measured_latency, placement: Placement | None = None,
    worker_class: type = RolloutWorker,
) -> Iterator[RayBackend]:
    """The learner and `config.num_workers` rollout workers as actors in one placement group
    (starting a local Ray instance, or connecting to `config.ray_address`, unless one is up).
    `placement` uses bundles of a group the caller reserved (a Tune trial's) instead;
    `worker_class` replaces the rollout worker (the scaling benchmark's simulated one)."""
    started = not ray.is_initialized()
    if started:
        bundles = actor_bundles(config, 0)
        start_ray(config.ray_address, num_cpus=local_cpus(bundles, shared=bundles[LEARNER_BUNDLE]["CPU"]))
    own = placement is None
    if placement is None:
        bundles = actor_bundles(config, ray.cluster_resources().get("GPU", 0))
        try:
            check_cluster_holds(bundles, config.num_workers)
        except ValueError:
            if started:
                ray.shutdown()
            raise
        placement = Placement(placement_group(bundles, strategy="PACK"))
    bundle = placement.group.bundle_specs[placement.first + 1]
    gpu_each = 1 if bundle.get("GPU", 0) >= 1 else 0
    actors: list[Any] = []
    backend: RayBackend | None = None
    try:
        ready, _ = ray.wait([placement.group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise RuntimeError(
                f"could not place the learner and {config.num_workers} rollout workers of {bundle} each within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; the cluster has {ray.cluster_resources()}: lower --num_workers"
            )
        worker_config = replace(worker_config, device="cuda" if gpu_each else "cpu",
                                num_threads=max(1, int(bundle["CPU"])))  # fmt: skip
        remote = ray.remote(worker_class)
        actors = [
            remote.options(
                num_cpus=bundle["CPU"], num_gpus=gpu_each, max_restarts=MAX_RESTARTS, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement.group, placement_group_bundle_index=placement.first + 1 + i),
            ).remote(worker_config, i, latency_fn=latency_fn)
            for i in range(config.num_workers)
        ]  # fmt: skip
        backend = RayBackend(actors, placement, controller, config, learner_state)
        log.info("learner (process %d) and %d rollout workers on %s", backend.learner_pid, len(actors),
                 "GPUs" if gpu_each else "CPUs")  # fmt: skip
        yield backend
    finally:
        for actor in actors + ([backend.learner] if backend is not None else []):
            ray.kill(actor)
        if own:
            remove_placement_group(placement.group)
        if started:
            ray.shutdown()


def local_cpus(bundles: Sequence[dict[str, float]], shared: float = math.inf) -> int:
    """CPUs a local Ray instance declares: the machine's, or what one run's bundles add up to where
    that is more by at most `shared` CPUs (a laptop's 2 cores hold 2 rollout workers and the learner;
    the learner's updates are short next to the rollouts, so it shares a core). A run that needs
    more than that is refused (`check_cluster_holds`) instead of crowding the machine."""
    cores = os.cpu_count() or 1
    wanted = math.ceil(sum(b.get("CPU", 0.0) for b in bundles))
    return max(cores, wanted) if wanted <= cores + shared else cores


def check_cluster_holds(bundles: Sequence[dict[str, float]], num_workers: int) -> None:
    """Refuse in seconds a run whose actors the cluster cannot hold (the placement group would
    otherwise wait PLACEMENT_TIMEOUT_S), naming what it has."""
    have = ray.cluster_resources()
    for key in ("CPU", "GPU"):
        need = sum(b.get(key, 0.0) for b in bundles)
        if need > have.get(key, 0.0) + 1e-9:
            raise ValueError(
                f"the learner and {num_workers} rollout workers need {need:g} {key}s in all, but the Ray cluster "
                f"has {have.get('CPU', 0.0):g} CPUs and {have.get('GPU', 0.0):g} GPUs: lower --num_workers, "
                "--worker_cpus or --learner_cpus (0.5 lets two actors share a core), or pass a larger --ray_address"
            )


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
