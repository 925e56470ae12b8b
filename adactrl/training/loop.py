"""The training loop, independent of how workers run: in process (`LocalBackend`) or on Ray
(`adactrl.training.driver.RayBackend`).

Per epoch the train split is shuffled from (seed, epoch) and cut into requests of
`batch_size` samples; each request's budgets and plan-sampling seed derive from
(seed, epoch, request_id). Every idle worker gets the next request with the newest weights;
the learner updates on each batch as it arrives. The epoch ends when every request is back, so
an epoch-end checkpoint is an exact data position: resume replays nothing and skips nothing.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
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
    LOSS_TOTAL,
    REWARD_TOTAL,
    ROLLOUT_ACCURACY,
    ROLLOUT_ESTIMATE_ABS_ERROR_MS,
    ROLLOUT_ESTIMATE_ERROR_MS,
    ROLLOUT_LATENCY_MS,
    ROLLOUT_VIOLATION_RATE,
    VAL_REWARD,
    WORKER_RESTARTS,
)
from adactrl.training.checkpoints import BEST_MODEL, TrainerState, epoch_checkpoint_name, save_training_checkpoint
from adactrl.training.config import TrainConfig
from adactrl.training.outputs import RunRecorder
from adactrl.training.records import (
    BudgetRange,
    EvalRequest,
    RolloutBatch,
    RolloutRequest,
    WeightsRef,
    estimate_errors,
)
from adactrl.training.summary import eval_metrics

log = logging.getLogger("adactrl.train")


class LearnerLike(Protocol):
    controller: Controller
    version: int

    def update(self, batch: RolloutBatch) -> Any: ...
    def weights(self) -> WeightsRef: ...
    def scheduler_step(self, val_reward: float) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...


class RolloutBackend(Protocol):
    """Runs worker methods somewhere. `wait` returns batches in completion order and hides restarts."""

    num_workers: int
    restarts: int

    def publish(self, weights: WeightsRef) -> WeightsRef: ...
    def submit(self, worker: int, request: RolloutRequest, weights: WeightsRef) -> None: ...
    def wait(self) -> tuple[int, RolloutBatch]: ...
    def run_all(self, method: str, args: Sequence[tuple | None], weights: WeightsRef | None) -> list: ...


class LocalBackend:
    """Workers in this process, run one request at a time in submission order: deterministic."""

    def __init__(self, workers: Sequence[Any]) -> None:
        self.workers = list(workers)
        self.num_workers = len(self.workers)
        self.restarts = 0
        self._queue: deque[tuple[int, RolloutRequest, WeightsRef]] = deque()

    def publish(self, weights: WeightsRef) -> WeightsRef:
        return weights

    def submit(self, worker: int, request: RolloutRequest, weights: WeightsRef) -> None:
        self._queue.append((worker, request, weights))

    def wait(self) -> tuple[int, RolloutBatch]:
        worker, request, weights = self._queue.popleft()
        self.workers[worker].load_weights(weights.version, weights.state)
        return worker, self.workers[worker].rollout(request)

    def run_all(self, method: str, args: Sequence[tuple | None], weights: WeightsRef | None) -> list:
        results = []
        for worker, call in zip(self.workers, args):
            if call is None:
                continue
            if weights is not None:
                worker.load_weights(weights.version, weights.state)
            results.append(getattr(worker, method)(*call))
        return results


def split_evenly(items: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """Round-robin `items` into `parts` tuples (some may be empty)."""
    return [tuple(items[i::parts]) for i in range(parts)]


def request_seed(seed: int, epoch: int, request_id: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, request_id]).generate_state(1)[0])


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        learner: LearnerLike,
        backend: RolloutBackend,
        recorder: RunRecorder,
        *,
        split_sizes: dict[str, int],
        state: TrainerState,
        on_batch: Callable[[int], None] | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.config = config
        self.learner = learner
        self.backend = backend
        self.recorder = recorder
        self.n_train = split_sizes["train"]
        self.n_val = split_sizes["validation"]
        self.state = state
        self.on_batch = on_batch
        self.on_epoch_end = on_epoch_end
        self.output_dir = Path(config.output_dir)
        self.weights = backend.publish(learner.weights())

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

    def calibrate(self) -> BudgetRange:
        """The budget range: given, or from the cheapest and full plans' latencies on every worker."""
        if self.config.budget_range_ms is not None:
            low, high = self.config.budget_range_ms
            budget = BudgetRange(low, high)
        else:
            n = min(self.config.calibration_samples, self.n_train)
            per_worker = [(tuple(range(n)),)] * self.backend.num_workers
            results = self.backend.run_all("calibrate", per_worker, None)
            budget = BudgetRange.calibrate(results, self.config.budget_margin)
        self.state.budget_range = budget
        # The budget position both stages read spans this range; workers get it with the weights.
        self.learner.controller.set_budget_range(budget.low_ms, budget.high_ms)
        self.weights = self.backend.publish(self.learner.weights())
        log.info("budget range %.2f..%.2f ms (cheapest plan %s ms, full plan %s ms)",
                 budget.low_ms, budget.high_ms, budget.cheapest_ms, budget.full_ms)
        recorded = {BUDGET_LOW_MS: budget.low_ms, BUDGET_HIGH_MS: budget.high_ms,
                    BUDGET_CHEAPEST_MS: budget.cheapest_ms, BUDGET_FULL_MS: budget.full_ms}  # fmt: skip
        self.recorder.log_params(recorded | {"budget/val_budgets_ms": self.val_budgets})
        return budget

    def validate(self, epoch: int, epoch_metrics: dict[str, float] | None = None) -> dict[str, float]:
        """The greedy policy on the validation split at the fixed validation budgets; `epoch_metrics`
        (the epoch's training aggregates) are logged and returned with the validation metrics."""
        chunks = split_evenly(list(range(self.n_val)), self.backend.num_workers)
        requests = [(EvalRequest(c, self.val_budgets, self.weights.version),) if c else None for c in chunks]
        batches = self.backend.run_all("evaluate", requests, self.weights)
        records = [r for b in batches for r in b.records]
        skipped = sum(len(b.skipped) for b in batches)
        metrics = eval_metrics(records) | (epoch_metrics or {})
        if not all(math.isfinite(v) for v in metrics.values()):
            raise ValueError(f"validation at epoch {epoch} gave non-finite metrics {metrics}; stopping")
        self.recorder.log_validation(epoch, self.state.step, metrics)
        log.info("validation epoch %d (%d records, %d samples skipped): %s", epoch, len(records), skipped,
                 _fmt(metrics))
        return metrics

    def run(self) -> TrainerState:
        """Calibrate and validate the untrained policy (fresh runs), then train the remaining epochs."""
        if self.state.budget_range is None:
            self.calibrate()
        if self.state.epoch == 0 and not self.state.untrained_val:
            self.state.untrained_val = self.validate(0)
        total = self.config.num_epochs * self.requests_per_epoch
        with tqdm(total=total, initial=self.state.step, desc="train", unit="batch", dynamic_ncols=True) as bar:
            for epoch in range(self.state.epoch + 1, self.config.num_epochs + 1):
                epoch_metrics = self._train_epoch(epoch, bar)
                metrics = self.validate(epoch, epoch_metrics)
                self.learner.scheduler_step(metrics[VAL_REWARD])
                self._end_epoch(epoch, metrics)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch, metrics)
        return self.state

    def _train_epoch(self, epoch: int, bar: tqdm) -> dict[str, float]:
        """One epoch of rollouts and updates -> the epoch's aggregates over its training rollouts
        (the latency estimator's error with --latency_mode estimated; {} otherwise)."""
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.n_train)
        size = self.config.batch_size
        pending = deque(enumerate(tuple(int(i) for i in order[k : k + size]) for k in range(0, self.n_train, size)))
        idle = deque(range(self.backend.num_workers))
        in_flight = 0
        latencies: list[dict[str, float]] = []
        while pending or in_flight:
            while idle and pending:
                request_id, chunk = pending.popleft()
                self.backend.submit(idle.popleft(), self._request(epoch, request_id, chunk), self.weights)
                in_flight += 1
            worker, batch = self.backend.wait()
            in_flight -= 1
            idle.append(worker)
            latencies += (r.latency_ms for r in batch.records)
            step = self.learner.update(batch)
            if step.version != self.weights.version:
                self.weights = self.backend.publish(self.learner.weights())
            self.state.step += 1
            self.state.worker_restarts = self.backend.restarts
            metrics = step.metrics | {WORKER_RESTARTS: float(self.backend.restarts)}
            self.recorder.log_train_step(self.state.step, epoch, metrics)
            bar.set_postfix_str(_postfix(metrics), refresh=False)
            bar.update(1)
            if self.on_batch is not None:
                self.on_batch(self.state.step)
        return estimate_errors(latencies, (ROLLOUT_ESTIMATE_ERROR_MS, ROLLOUT_ESTIMATE_ABS_ERROR_MS))

    def _request(self, epoch: int, request_id: int, chunk: tuple[int, ...]) -> RolloutRequest:
        seed = request_seed(self.config.seed, epoch, request_id)
        repeats = self.config.budgets_per_sample
        indices = tuple(i for i in chunk for _ in range(repeats))
        budgets = self.budget_range.sample(np.random.default_rng(seed), len(indices))
        return RolloutRequest(epoch, request_id, indices, budgets, self.config.group_size, self.weights.version, seed)

    def _end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.state.epoch = epoch
        controller = self.learner.controller
        if metrics[VAL_REWARD] > self.state.best_val_reward:
            self.state.best_val_reward = metrics[VAL_REWARD]
            self.state.best_epoch = epoch
            self.state.best_val = dict(metrics)
            extra = {"epoch": epoch, "policy_version": self.learner.version, "val": dict(metrics),
                     "budget_range": self.budget_range.to_dict()}  # fmt: skip
            save_controller(self.output_dir / BEST_MODEL, controller, extra=extra)
            log.info("epoch %d is the best so far (val reward %.4f): saved %s", epoch, metrics[VAL_REWARD], BEST_MODEL)
        self.state.mlflow_run_id = self.recorder.run_id
        path = self.output_dir / epoch_checkpoint_name(epoch)
        save_training_checkpoint(path, controller, self.learner.state_dict(), self.state)
        log.info("saved %s (step %d, policy version %d)", path.name, self.state.step, self.learner.version)


def _postfix(metrics: dict[str, float]) -> str:
    keys = ((LOSS_TOTAL, "loss", "{:.3f}"), (REWARD_TOTAL, "reward", "{:.3f}"), (ROLLOUT_ACCURACY, "acc", "{:.2f}"),
            (ROLLOUT_LATENCY_MS, "lat", "{:.1f}ms"), (ROLLOUT_VIOLATION_RATE, "viol", "{:.0%}"))  # fmt: skip
    return " ".join(f"{name}={fmt.format(metrics[k])}" for k, name, fmt in keys if k in metrics)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
