"""Typed training events and the observers that subscribe to them.

The Trainer emits an event at each point of a run that something outside the loop watches: a new
weight version published, a learner update taken, a validation pass done, an epoch checkpointed.
Observers (the MLflow recorder, the Ray dashboard metrics, Tune's reporting, tests) override the
methods they need; none of them reaches into the backend or the learner.
"""

from __future__ import annotations

from dataclasses import dataclass

from adactrl.training.outputs import RunRecorder
from adactrl.training.records import EvalRecord


@dataclass(frozen=True)
class PublishEvent:
    """A new policy version is in the object store (in process: a fresh copy of the state)."""

    version: int
    publish_ms: float
    """Time the learner took to put the version where the workers pull it from."""


@dataclass(frozen=True)
class BatchEvent:
    """The learner took (or, with nothing fresh to learn from, skipped) one rollout batch."""

    step: int
    epoch: int
    request_id: int
    worker_index: int
    metrics: dict[str, float]
    """The learner's metrics for the batch plus the run's restart counters."""


@dataclass(frozen=True)
class ValidationEvent:
    """The greedy policy was evaluated at the validation budgets (epoch 0: the untrained policy)."""

    epoch: int
    step: int
    metrics: dict[str, float]
    records: tuple[EvalRecord, ...]


@dataclass(frozen=True)
class EpochEvent:
    """An epoch ended: validated, the scheduler stepped, the checkpoint written."""

    epoch: int
    metrics: dict[str, float]


class TrainingObserver:
    """Subscribes to training events; every method is a no-op unless overridden."""

    def on_publish(self, event: PublishEvent) -> None:
        pass

    def on_batch(self, event: BatchEvent) -> None:
        pass

    def on_validation(self, event: ValidationEvent) -> None:
        pass

    def on_epoch_end(self, event: EpochEvent) -> None:
        pass


class RecorderObserver(TrainingObserver):
    """The run's record: every batch and validation goes to the history CSVs and the MLflow run."""

    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder

    def on_batch(self, event: BatchEvent) -> None:
        self.recorder.log_train_step(event.step, event.epoch, event.metrics)

    def on_validation(self, event: ValidationEvent) -> None:
        self.recorder.log_validation(event.epoch, event.step, event.metrics)
