"""Rollout workers killed four times in one run. Worker A twice back to back while it waits
between requests (before the driver notices anything), worker B once with a request in flight,
then A a third time, past Ray's max_restarts (2): A is dropped and B takes its work. Every
re-issued or queued request finds its weights, every restart is counted, and nothing is lost."""

import time

import pytest
from mlflow.tracking import MlflowClient

from adactrl.metrics import WORKER_RESTARTS
from adactrl.orchestration.driver import run_training
from adactrl.training.config import DataConfig
from tests.faults.checks import assert_nothing_lost
from tests.training.helpers import cost_latency, small_config

pytestmark = pytest.mark.usefixtures("ray_local")


def kill_and_wait(ray, actor) -> None:
    """Kill the actor and return once Ray has brought it back in a new process."""
    old = ray.get(actor.ping.remote())
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if ray.get(actor.ping.remote(), timeout=60) != old:
                return
        except ray.exceptions.RayActorError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the killed worker did not come back")


class KillWorkers:
    """Wraps the backend's `submit`: just before request 1 goes out, its worker (A) is killed twice
    (each time waiting for Ray's restart). In epoch 2 (both workers get a request as it starts),
    the other worker (B) is killed just after its first request went out, and A just before its
    first request, for good."""

    def __init__(self, ray) -> None:
        self.ray = ray
        self.twice: int | None = None
        self.in_flight: int | None = None
        self.dropped: int | None = None

    def hook(self, backend) -> None:
        submit = backend.submit

        def submit_with_kills(worker, request, weights):
            if self.twice is None and request.epoch == 1 and request.request_id == 1:
                self.twice = worker
                kill_and_wait(self.ray, backend.actors[worker])
                kill_and_wait(self.ray, backend.actors[worker])
            if self.dropped is None and request.epoch == 2 and worker == self.twice:
                self.dropped = worker
                self.ray.kill(backend.actors[worker], no_restart=False)  # its third death: Ray gives up
            submit(worker, request, weights)
            if self.in_flight is None and request.epoch == 2 and worker != self.twice:
                self.in_flight = worker
                self.ray.kill(backend.actors[worker], no_restart=False)

        backend.submit = submit_with_kills


def test_workers_killed_again_and_again_are_restarted_or_dropped_and_nothing_is_lost(tmp_path, tiny_model_dir,
                                                                                  ray_local):  # fmt: skip
    config = small_config(tmp_path / "run", tiny_model_dir, num_workers=2, num_epochs=2,
                          data=DataConfig(num_train_samples=8, num_val_samples=2), budget_range_ms=(3.0, 10.0))
    killer = KillWorkers(ray_local)
    outcome = run_training(config, latency_fn=cost_latency, backend_hook=killer.hook)

    assert killer.twice is not None and killer.in_flight is not None and killer.dropped == killer.twice
    assert outcome.state.step == 8
    assert outcome.state.worker_restarts == outcome.summary["worker_restarts"] == 3
    history = MlflowClient(outcome.tracking_uri).get_metric_history(outcome.run_id, WORKER_RESTARTS)
    assert max(m.value for m in history) == 3
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Ray restarted it" in log and f"rollout worker {killer.dropped} died" in log
    assert "did not come back; its work goes to the others" in log
    assert_nothing_lost(outcome, steps=8, epochs=2)
