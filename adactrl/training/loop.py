"""The training loop, independent of where the workers and the learner run: in this process
(`adactrl.orchestration.LocalBackend`) or as Ray actors (`adactrl.orchestration.RayBackend`).

Per epoch the train split is shuffled from (seed, epoch) and cut into requests of `batch_size`
samples; each request's budgets and plan-sampling seed derive from (seed, epoch, request_id).
The loop never sees rollout records: the backend hands each finished batch to the learner, and
the loop only orders the work.

The schedule is fixed, so a run does not depend on which worker is faster. With
`depth = max_policy_lag + 1`, request p runs on the weights published after the update of request
p - depth (the epoch's starting weights for the first `depth` requests), and the learner applies
the batches in request order. Rollouts and updates overlap: up to `depth` requests are out at
once, and each batch is exactly `max_policy_lag` versions old when the learner takes it (never
more, so nothing is dropped as stale). The epoch ends when every update is applied, so an
epoch-end checkpoint is an exact data position: resume replays nothing and skips nothing, and
with a deterministic latency a resumed run, a Ray run and an in-process run all give the same
weights.

If the learner is lost mid-epoch (`LearnerLost`), the epoch is replayed from the newest
checkpoint's learner state: its steps leave the history files and are taken again.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from adactrl.controller import Controller, save_controller
from adactrl.metrics import (
    BUDGET_CHEAPEST_MS,
    BUDGET_FULL_MS,
    BUDGET_HIGH_MS,
    BUDGET_LOW_MS,
    LATENCY_ESTIMATE_ABS_ERROR_MS,
    LATENCY_ESTIMATE_ERROR_MS,
    LEARNER_RESTARTS,
    LOSS_TOTAL,
    REWARD_TOTAL,
    ROLLOUT_ACCURACY,
    ROLLOUT_ESTIMATE_ABS_ERROR_MS,
    ROLLOUT_ESTIMATE_ERROR_MS,
    ROLLOUT_LATENCY_MS,
    ROLLOUT_NUM_PLANS,
    ROLLOUT_VIOLATION_RATE,
    VAL_REWARD,
    WORKER_RESTARTS,
)
from adactrl.training.checkpoints import BEST_MODEL, TrainerState, epoch_checkpoint_name, save_training_checkpoint
from adactrl.training.config import TrainConfig
from adactrl.training.events import (
    BatchEvent,
    EpochEvent,
    PublishEvent,
    RecorderObserver,
    TrainingObserver,
    ValidationEvent,
)
from adactrl.training.outputs import RunRecorder
from adactrl.training.records import (
    BudgetRange,
    CalibrationResult,
    EvalBatch,
    EvalRecord,
    EvalRequest,
    RolloutRequest,
    WeightsRef,
)
from adactrl.training.summary import eval_metrics

log = logging.getLogger("adactrl.train")
MAX_LEARNER_RESTARTS = 2
"""A learner lost more often than this in one run stops the run."""


class LearnerLost(RuntimeError):
    """The learner went away mid-work; its pending updates are gone."""


@dataclass(frozen=True)
class LearnerSnapshot:
    """What a checkpoint keeps of the learner, and what a restarted learner starts from."""

    controller_state: dict[str, Any]
    learner_state: dict[str, Any]
    """`Learner.state_dict()`: optimizer, scheduler, version and RNG states."""


@dataclass(frozen=True)
class RolloutDone:
    """A worker finished a request; its batch waits (at the backend) to be handed to the learner."""

    worker: int
    request_id: int


@dataclass(frozen=True)
class Updated:
    """The learner took the batch of `request_id` (or skipped it: then `weights` is unchanged)."""

    request_id: int
    version: int
    metrics: dict[str, float]
    weights: WeightsRef
    """The newest published weights after this update."""
    publish_ms: float | None
    """Time to publish the new version; None when the version did not change."""


class Backend(Protocol):
    """The rollout workers and the learner, wherever they run. Typed calls only; worker restarts are
    hidden (the work is re-issued), a lost learner raises LearnerLost from `wait`."""

    num_workers: int
    worker_restarts: int
    learner_restarts: int

    def split_sizes(self) -> dict[str, int]: ...
    def calibrate(self, sample_indices: tuple[int, ...]) -> list[CalibrationResult]: ...
    def set_budget_range(self, low_ms: float, high_ms: float) -> WeightsRef: ...
    def weights(self) -> WeightsRef: ...
    def evaluate(self, requests: Sequence[EvalRequest | None], weights: WeightsRef) -> list[EvalBatch]: ...
    def sweep(self, chunks: Sequence[tuple[int, ...]]) -> list[Any]: ...
    def submit(self, worker: int, request: RolloutRequest, weights: WeightsRef) -> None: ...
    def learn(self, request_id: int) -> None: ...
    def wait(self) -> RolloutDone | Updated: ...
    def scheduler_step(self, val_reward: float) -> None: ...
    def learner_snapshot(self) -> LearnerSnapshot: ...
    def restart_learner(self, snapshot: LearnerSnapshot) -> WeightsRef: ...


def split_evenly(items: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """Round-robin `items` into `parts` tuples (some may be empty)."""
    return [tuple(items[i::parts]) for i in range(parts)]


def request_seed(seed: int, epoch: int, request_id: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, request_id]).generate_state(1)[0])


class Trainer:
    """Drives one run over a Backend. `controller` is this process's copy of the policy: the
    learner's weights are loaded into it for every checkpoint and for best_model.pt."""

    def __init__(
        self,
        config: TrainConfig,
        backend: Backend,
        recorder: RunRecorder,
        controller: Controller,
        *,
        split_sizes: dict[str, int],
        state: TrainerState,
        observers: Sequence[TrainingObserver] = (),
    ) -> None:
        self.config = config
        self.backend = backend
        self.recorder = recorder
        self.controller = controller
        self.n_train = split_sizes["train"]
        self.n_val = split_sizes["validation"]
        self.state = state
        self.observers = (RecorderObserver(recorder), *observers)
        self.output_dir = Path(config.output_dir)
        self.weights = backend.weights()
        self.best_records: tuple[EvalRecord, ...] = ()
        """The best epoch's validation records (what budget_curves.png draws)."""
        self._last_records: tuple[EvalRecord, ...] = ()
        self._restart_point: LearnerSnapshot | None = None
        """The learner's state at the newest checkpoint (or at the start): a lost learner restarts from it."""
        self._restart_step = state.step
        self._restarts_before = (state.worker_restarts, state.learner_restarts)
        """A resumed run's restarts before this attempt: the backend counts this attempt's."""
        if self.depth < backend.num_workers:
            log.warning("--max_policy_lag %d keeps at most %d of the %d rollout workers busy (a request waits for "
                        "the update %d requests before it); the default, --num_workers, keeps all of them busy",
                        self.depth - 1, self.depth, backend.num_workers, self.depth)  # fmt: skip

    @property
    def budget_range(self) -> BudgetRange:
        assert self.state.budget_range is not None, "calibrate() runs first"
        return self.state.budget_range

    @property
    def val_budgets(self) -> tuple[float, ...]:
        return self.budget_range.quantiles(self.config.num_val_budgets)

    @property
    def requests_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.config.batch_size)

    @property
    def depth(self) -> int:
        """Requests out at once: request p runs on the weights after update p - depth."""
        assert self.config.learner.max_policy_lag is not None, "TrainConfig resolves it"
        return self.config.learner.max_policy_lag + 1

    def calibrate(self) -> BudgetRange:
        """The budget range: given, or from the cheapest and full plans' latencies on every worker."""
        if self.config.budget_range_ms is not None:
            low, high = self.config.budget_range_ms
            budget = BudgetRange(low, high)
        else:
            n = min(self.config.calibration_samples, self.n_train)
            budget = BudgetRange.calibrate(self.backend.calibrate(tuple(range(n))), self.config.budget_margin)
        self.state.budget_range = budget
        self._use_budget_range()
        log.info("budget range %.2f..%.2f ms (cheapest plan %s ms, full plan %s ms)",
                 budget.low_ms, budget.high_ms, budget.cheapest_ms, budget.full_ms)
        recorded = {BUDGET_LOW_MS: budget.low_ms, BUDGET_HIGH_MS: budget.high_ms,
                    BUDGET_CHEAPEST_MS: budget.cheapest_ms, BUDGET_FULL_MS: budget.full_ms}  # fmt: skip
        self.recorder.log_params(recorded | {"budget/val_budgets_ms": self.val_budgets})
        return budget

    def _use_budget_range(self) -> None:
        # The budget position both stages read spans this range; workers get it with the weights.
        self.weights = self.backend.set_budget_range(self.budget_range.low_ms, self.budget_range.high_ms)
        self.controller.set_budget_range(self.budget_range.low_ms, self.budget_range.high_ms)

    def validate(self, epoch: int, epoch_metrics: dict[str, float] | None = None) -> dict[str, float]:
        """The greedy policy on the validation split at the fixed validation budgets; `epoch_metrics`
        (the epoch's training aggregates) are logged and returned with the validation metrics."""
        chunks = split_evenly(list(range(self.n_val)), self.backend.num_workers)
        requests = [EvalRequest(c, self.val_budgets, self.weights.version) if c else None for c in chunks]
        batches = self.backend.evaluate(requests, self.weights)
        records = tuple(r for b in batches for r in b.records)
        skipped = sum(len(b.skipped) for b in batches)
        metrics = eval_metrics(records) | (epoch_metrics or {})
        if not all(math.isfinite(v) for v in metrics.values()):
            raise ValueError(f"validation at epoch {epoch} gave non-finite metrics {metrics}; stopping")
        self._emit("on_validation", ValidationEvent(epoch, self.state.step, metrics, records))
        log.info("validation epoch %d (%d records, %d samples skipped): %s", epoch, len(records), skipped,
                 _fmt(metrics))
        self._last_records = records
        return metrics

    def run(self) -> TrainerState:
        """Calibrate and validate the untrained policy (fresh runs), then train the remaining epochs."""
        if self.state.budget_range is None:
            self.calibrate()
        else:
            self._use_budget_range()
        self._restart_point = self.backend.learner_snapshot()  # with the budget range in the controller
        if self.state.epoch == 0 and not self.state.untrained_val:
            self.state.untrained_val = self.validate(0)
        total = self.config.num_epochs * self.requests_per_epoch
        with tqdm(total=total, initial=self.state.step, desc="train", unit="batch", dynamic_ncols=True) as bar:
            for epoch in range(self.state.epoch + 1, self.config.num_epochs + 1):
                if self._runs_left(epoch) <= 0:
                    break  # --max_model_runs reached
                while True:
                    try:
                        metrics = self._run_epoch(epoch, bar)
                        break
                    except LearnerLost as err:
                        self._replay_epoch(epoch, bar, err)
                self._emit("on_epoch_end", EpochEvent(epoch, metrics))
        self._count_restarts()  # those during the last validation too
        return self.state

    def _run_epoch(self, epoch: int, bar: tqdm) -> dict[str, float]:
        epoch_metrics = self._train_epoch(epoch, bar)
        metrics = self.validate(epoch, epoch_metrics)
        self.backend.scheduler_step(metrics[VAL_REWARD])
        self._end_epoch(epoch, metrics)
        return metrics

    def _train_epoch(self, epoch: int, bar: tqdm) -> dict[str, float]:
        """One epoch of rollouts and updates on the fixed schedule -> the epoch's aggregates over its
        training rollouts (the latency estimator's error with --latency_mode estimated; {} otherwise)."""
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.n_train)
        size = self.config.batch_size
        chunks = [tuple(int(i) for i in order[k : k + size]) for k in range(0, self.n_train, size)]
        runs_left, kept = self._runs_left(epoch), 0
        while kept < len(chunks) and runs_left > 0:  # --max_model_runs: the epoch's requests up to the cap
            runs_left -= len(chunks[kept]) * self.config.budgets_per_sample * self.config.group_size
            kept += 1
        chunks = chunks[:kept]
        start = self.weights
        after: dict[int, WeightsRef] = {}
        """request_id -> the weights published after its update (kept while a request may need them)."""
        idle = deque(range(self.backend.num_workers))
        worker_of: dict[int, int] = {}
        back: set[int] = set()
        submitted = learned = 0
        applied = -1
        errors = _EstimateErrors()
        while applied < len(chunks) - 1:
            while idle and submitted < len(chunks) and submitted - self.depth <= applied:
                weights = after.pop(submitted - self.depth, start)
                worker_of[submitted] = idle.popleft()
                request = self._request(epoch, submitted, chunks[submitted], weights.version)
                self.backend.submit(worker_of[submitted], request, weights)
                submitted += 1
            event = self.backend.wait()
            if isinstance(event, RolloutDone):
                idle.append(event.worker)
                back.add(event.request_id)
                while learned in back:
                    self.backend.learn(learned)
                    learned += 1
                continue
            assert event.request_id == applied + 1, f"update of request {event.request_id} after {applied}"
            applied = event.request_id
            after[applied] = self.weights = event.weights
            errors.add(event.metrics)
            self._record_update(epoch, event, worker_of[applied], bar)
        return errors.result()

    def _runs_left(self, epoch: int) -> float:
        """Training model runs `--max_model_runs` leaves for `epoch` and the epochs after it (every epoch
        before it ran in full: n_train samples x budgets_per_sample x group_size plans); inf without a cap."""
        if self.config.max_model_runs is None:
            return math.inf
        per_epoch = self.n_train * self.config.budgets_per_sample * self.config.group_size
        return self.config.max_model_runs - (epoch - 1) * per_epoch

    def _record_update(self, epoch: int, event: Updated, worker: int, bar: tqdm) -> None:
        self.state.step += 1
        self._count_restarts()
        metrics = event.metrics | {WORKER_RESTARTS: float(self.state.worker_restarts),
                                   LEARNER_RESTARTS: float(self.state.learner_restarts)}  # fmt: skip
        if event.publish_ms is not None:
            self._emit("on_publish", PublishEvent(event.version, event.publish_ms))
        self._emit("on_batch", BatchEvent(self.state.step, epoch, event.request_id, worker, metrics))
        bar.set_postfix_str(_postfix(metrics), refresh=False)
        bar.update(1)

    def _request(self, epoch: int, request_id: int, chunk: tuple[int, ...], version: int) -> RolloutRequest:
        seed = request_seed(self.config.seed, epoch, request_id)
        repeats = self.config.budgets_per_sample
        indices = tuple(i for i in chunk for _ in range(repeats))
        budgets = self.budget_range.sample(np.random.default_rng(seed), len(indices))
        return RolloutRequest(epoch, request_id, indices, budgets, self.config.group_size, version, seed,
                              self.config.rollout_mode, self.config.composition_check_every)  # fmt: skip

    def _end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        snapshot = self.backend.learner_snapshot()  # first: a learner lost here leaves nothing half-written
        self.controller.load_state_dict(snapshot.controller_state)
        self.state.epoch = epoch
        if metrics[VAL_REWARD] > self.state.best_val_reward:
            self.state.best_val_reward = metrics[VAL_REWARD]
            self.state.best_epoch = epoch
            self.state.best_val = dict(metrics)
            self.best_records = self._last_records
            extra = {"epoch": epoch, "policy_version": self.weights.version, "val": dict(metrics),
                     "budget_range": self.budget_range.to_dict()}  # fmt: skip
            save_controller(self.output_dir / BEST_MODEL, self.controller, extra=extra)
            log.info("epoch %d is the best so far (val reward %.4f): saved %s", epoch, metrics[VAL_REWARD], BEST_MODEL)
        self.state.mlflow_run_id = self.recorder.run_id
        path = self.output_dir / epoch_checkpoint_name(epoch)
        save_training_checkpoint(path, self.controller, snapshot.learner_state, self.state)
        self._restart_point, self._restart_step = snapshot, self.state.step
        log.info("saved %s (step %d, policy version %d)", path.name, self.state.step, self.weights.version)

    def _replay_epoch(self, epoch: int, bar: tqdm, err: LearnerLost) -> None:
        """Restart the learner from the newest checkpoint's state and forget the epoch's steps."""
        if self.backend.learner_restarts >= MAX_LEARNER_RESTARTS:
            raise RuntimeError(f"the learner was lost {self.backend.learner_restarts + 1} times; stopping") from err
        step = self._restart_step
        log.warning("the learner was lost during epoch %d (%s); restarting it from the state of epoch %d's "
                    "checkpoint and replaying the epoch from step %d", epoch, err, epoch - 1, step)  # fmt: skip
        assert self._restart_point is not None, "run() takes the first snapshot"
        self.weights = self.backend.restart_learner(self._restart_point)
        self.state.step = step
        self._count_restarts()
        self.recorder.train_history.truncate(step)
        self.recorder.val_history.truncate(epoch - 1)
        bar.n = step
        bar.refresh()

    def _count_restarts(self) -> None:
        workers, learners = self._restarts_before
        self.state.worker_restarts = workers + self.backend.worker_restarts
        self.state.learner_restarts = learners + self.backend.learner_restarts

    def _emit(self, method: str, event: Any) -> None:
        for observer in self.observers:
            getattr(observer, method)(event)


class _EstimateErrors:
    """The epoch's latency-estimator error from the learner's per-batch means (weighted by plans)."""

    def __init__(self) -> None:
        self.plans = 0.0
        self.sums = [0.0, 0.0]

    def add(self, metrics: dict[str, float]) -> None:
        if LATENCY_ESTIMATE_ERROR_MS in metrics:
            n = metrics[ROLLOUT_NUM_PLANS]
            self.plans += n
            self.sums[0] += n * metrics[LATENCY_ESTIMATE_ERROR_MS]
            self.sums[1] += n * metrics[LATENCY_ESTIMATE_ABS_ERROR_MS]

    def result(self) -> dict[str, float]:
        if not self.plans:
            return {}
        return {ROLLOUT_ESTIMATE_ERROR_MS: self.sums[0] / self.plans,
                ROLLOUT_ESTIMATE_ABS_ERROR_MS: self.sums[1] / self.plans}  # fmt: skip


def _postfix(metrics: dict[str, float]) -> str:
    keys = ((LOSS_TOTAL, "loss", "{:.3f}"), (REWARD_TOTAL, "reward", "{:.3f}"), (ROLLOUT_ACCURACY, "acc", "{:.2f}"),
            (ROLLOUT_LATENCY_MS, "lat", "{:.1f}ms"), (ROLLOUT_VIOLATION_RATE, "viol", "{:.0%}"))  # fmt: skip
    return " ".join(f"{name}={fmt.format(metrics[k])}" for k, name, fmt in keys if k in metrics)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
