"""The in-process backend: the rollout workers and the learner as plain objects in this process.

One call at a time in a fixed order (queued learner updates first, then rollouts in submission
order), so with a deterministic latency a run is reproducible: the resume tests use it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from adactrl.profiling import SweepRecord
from adactrl.training.loop import LearnerSnapshot, RolloutDone, Updated
from adactrl.training.records import (
    CalibrationResult,
    EvalBatch,
    EvalRequest,
    RolloutBatch,
    RolloutRequest,
    WeightsRef,
)
from learner import Learner
from rollout_workers import RolloutWorker


class LocalBackend:
    """`adactrl.training.loop.Backend` with everything in this process."""

    def __init__(self, workers: Sequence[RolloutWorker], learner: Learner) -> None:
        self.workers = list(workers)
        self.learner = learner
        self.num_workers = len(self.workers)
        self.worker_restarts = 0
        self.learner_restarts = 0
        self._rollouts: deque[tuple[int, RolloutRequest, WeightsRef]] = deque()
        self._batches: dict[int, RolloutBatch] = {}
        self._to_learn: deque[int] = deque()
        self._held: list[WeightsRef | None] = [None] * self.num_workers
        self._weights = learner.weights()

    def split_sizes(self) -> dict[str, int]:
        return self.workers[0].split_sizes()

    def calibrate(self, sample_indices: tuple[int, ...]) -> list[CalibrationResult]:
        return [worker.calibrate(sample_indices) for worker in self.workers]

    def set_budget_range(self, low_ms: float, high_ms: float) -> WeightsRef:
        self.learner.controller.set_budget_range(low_ms, high_ms)
        self._weights = self.learner.weights()
        return self._weights

    def weights(self) -> WeightsRef:
        return self._weights

    def evaluate(self, requests: Sequence[EvalRequest | None], weights: WeightsRef) -> list[EvalBatch]:
        batches = []
        for index, request in enumerate(requests):
            if request is not None:
                self._send(index, weights)
                batches.append(self.workers[index].evaluate(request))
        return batches

    def sweep(self, chunks: Sequence[tuple[int, ...]]) -> list[SweepRecord]:
        return [r for worker, chunk in zip(self.workers, chunks) if chunk for r in worker.sweep(chunk)]

    def submit(self, worker: int, request: RolloutRequest, weights: WeightsRef) -> None:
        self._rollouts.append((worker, request, weights))

    def learn(self, request_id: int) -> None:
        self._to_learn.append(request_id)

    def wait(self) -> RolloutDone | Updated:
        if self._to_learn:
            request_id = self._to_learn.popleft()
            step = self.learner.update(self._batches.pop(request_id))
            publish_ms = None
            if step.version != self._weights.version:
                began = time.perf_counter()
                self._weights = self.learner.weights()
                publish_ms = (time.perf_counter() - began) * 1000.0
            return Updated(request_id, step.version, step.metrics, self._weights, publish_ms)
        worker, request, weights = self._rollouts.popleft()
        self._send(worker, weights)
        self._batches[request.request_id] = self.workers[worker].rollout(request)
        return RolloutDone(worker, request.request_id)

    def scheduler_step(self, val_reward: float) -> None:
        self.learner.scheduler_step(val_reward)

    def learner_snapshot(self) -> LearnerSnapshot:
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.learner.controller.state_dict().items()}
        return LearnerSnapshot(state, self.learner.state_dict())

    def restart_learner(self, snapshot: LearnerSnapshot) -> WeightsRef:
        """Put the learner back to `snapshot` and drop every queued call."""
        self.learner.controller.load_state_dict(snapshot.controller_state)
        self.learner.load_state_dict(snapshot.learner_state)
        self.learner_restarts += 1
        self._rollouts.clear()
        self._batches.clear()
        self._to_learn.clear()
        self._held = [None] * self.num_workers
        self._weights = self.learner.weights()
        return self._weights

    def _send(self, worker: int, weights: WeightsRef) -> None:
        if self._held[worker] is not weights:
            self.workers[worker].load_weights(weights.version, weights.state)
            self._held[worker] = weights
