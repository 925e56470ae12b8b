"""The learner as a Ray actor: a `learner.Learner` plus the object store.

A plain class (`RayBackend` applies `ray.remote` when it starts one, in bundle 0 of the run's
placement group). It fetches each rollout batch itself from the object store, takes the step,
and puts each new weight version there once, answering with (version, ref).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch

from adactrl.controller import Controller
from adactrl.training.config import LearnerConfig
from adactrl.training.loop import LearnerSnapshot, Updated
from adactrl.training.records import WeightsRef
from learner import Learner


class LearnerActor:
    """The learner as Ray runs it: a `Learner` plus the object store."""

    def __init__(
        self, controller: Controller, config: LearnerConfig, learner_state: dict[str, Any] | None, device: str,
        num_threads: int,
    ) -> None:  # fmt: skip
        torch.set_num_threads(num_threads)
        self.learner = Learner(controller.to(device), config)
        if learner_state is not None:
            self.learner.load_state_dict(learner_state)
        self._weights, _ = self._publish()

    def ping(self) -> int:
        """The learner's process id (tests and the driver use it to see a restart)."""
        return os.getpid()

    def weights(self) -> WeightsRef:
        return self._weights

    def set_budget_range(self, low_ms: float, high_ms: float) -> WeightsRef:
        self.learner.controller.set_budget_range(low_ms, high_ms)
        self._weights, _ = self._publish()
        return self._weights

    def update(self, batch_ref: list[ray.ObjectRef]) -> Updated:
        """One learner step on the batch behind `batch_ref[0]`, fetched here from the object store.
        The ref comes wrapped in a list so that the call has no argument to wait for: Ray then runs
        the learner's calls in the order the driver sent them, the request order."""
        batch = ray.get(batch_ref[0])
        step = self.learner.update(batch)
        publish_ms = None
        if step.version != self._weights.version:
            self._weights, publish_ms = self._publish()
        return Updated(batch.request_id, step.version, step.metrics, self._weights, publish_ms)

    def scheduler_step(self, val_reward: float) -> None:
        self.learner.scheduler_step(val_reward)

    def snapshot(self) -> LearnerSnapshot:
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.learner.controller.state_dict().items()}
        return LearnerSnapshot(state, self.learner.state_dict())

    def _publish(self) -> tuple[WeightsRef, float]:
        """Put the newest state in the object store once; every worker pulls it from there. As numpy
        arrays: a worker reads those from shared memory without a copy (torch tensors are
        unpickled, about twice the time for 16 workers on 2 cores)."""
        began = time.perf_counter()
        weights = self.learner.weights()
        arrays = {k: v.numpy() for k, v in weights.state.items()}
        published = WeightsRef(weights.version, ray.put(arrays))
        return published, (time.perf_counter() - began) * 1000.0
