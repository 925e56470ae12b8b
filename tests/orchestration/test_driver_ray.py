"""`adactrl train` on the shared local Ray instance: the learner actor and 2 CPU rollout workers.
(Killed workers and a killed learner: tests/faults/.)"""

import csv
import math
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from adactrl.controller import Controller, ControllerConfig
from adactrl.metrics import (
    LATENCY_ESTIMATE_ERROR_MS,
    LOSS_TOTAL,
    POLICY_VERSION,
    VAL_ESTIMATE_ABS_ERROR_MS,
    VAL_REWARD,
)
from adactrl.training.checkpoints import load_training_checkpoint
from adactrl.orchestration.driver import run_training
from adactrl.training.events import TrainingObserver
from rollout_workers import load_model
from tests.training.helpers import cost_latency, small_config, train_tiny_estimator

pytestmark = pytest.mark.usefixtures("ray_local")


class Watch(TrainingObserver):
    """Records the backend, every published version's state and the workers' weights at one step."""

    def __init__(self, ray, at_step: int) -> None:
        self.ray, self.at_step = ray, at_step
        self.backend = None
        self.published: list[int] = []
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.held: list = []

    def hook(self, backend) -> None:
        self.backend = backend

    def _keep_newest(self) -> None:
        weights = self.backend.weights()
        self.states[weights.version] = self.ray.get(weights.state)

    def on_validation(self, event) -> None:
        self._keep_newest()  # after calibration: version 0 with the run's budget range

    def on_publish(self, event) -> None:
        self.published.append(event.version)

    def on_batch(self, event) -> None:
        self._keep_newest()
        if event.step == self.at_step:
            self.held.extend(self.ray.get([a.current_weights.remote() for a in self.backend.actors]))


def test_ray_training_advances_versions_broadcasts_weights_and_logs_to_mlflow(tmp_path, tiny_model_dir, ray_local):
    ray = ray_local
    config = small_config(tmp_path / "run", tiny_model_dir, num_workers=2, calibration_samples=2)
    watch = Watch(ray, at_step=4)

    outcome = run_training(config, latency_fn=cost_latency, observers=[watch], backend_hook=watch.hook)

    # The learner runs in its own actor process, apart from the driver and the workers.
    backend = watch.backend
    assert backend.learner_pid != os.getpid() and backend.learner_pid not in backend._pids
    # 4 samples / batch 2 = 2 requests per epoch, 2 epochs: 4 updates, one version each.
    assert outcome.state.step == 4
    assert watch.published == [1, 2, 3, 4]
    # Each worker holds a version the schedule gave it, with exactly the state published for it.
    assert len(watch.held) == 2 and all(w.version >= 1 for w in watch.held)
    for weights in watch.held:
        for name, value in watch.states[weights.version].items():
            assert torch.equal(weights.state[name], torch.tensor(value)), name

    model = load_model(tiny_model_dir, None)
    trained, learner_state, _ = load_training_checkpoint(
        tmp_path / "run" / "checkpoint_epoch_2.pt", model.knob_space, model.hidden_size)
    assert learner_state["version"] == 4
    initial = Controller(ControllerConfig(d_model=model.hidden_size, seed=config.seed), model.knob_space)
    before, after = initial.state_dict(), trained.state_dict()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        # Trained: both stages. The budget range is the calibrated one. Nothing else moves.
        assert changed == name.startswith(("stage1.", "stage2.", "budget_encoder.range_ms")), name

    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert float(run.data.params["budget/low_ms"]) > 0 and run.data.params["group_size"] == "3"
    assert [m.step for m in client.get_metric_history(outcome.run_id, LOSS_TOTAL)] == [1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(outcome.run_id, POLICY_VERSION)] == [1, 2, 3, 4]
    assert len(client.get_metric_history(outcome.run_id, VAL_REWARD)) == 3  # untrained + 2 epochs
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"best_model.pt", "training_history.csv", "validation_history.csv"} <= artifacts


def test_ray_workers_load_the_estimator_and_log_its_error(tmp_path, tiny_model_dir, tiny_model, monkeypatch):
    train_tiny_estimator(tmp_path / "latency_estimator.pt", tiny_model.knob_space)
    monkeypatch.chdir(tmp_path)  # a relative path, as typed: the actors find it all the same
    config = small_config(tmp_path / "run", tiny_model_dir, num_epochs=1, latency_mode="estimated",
                          latency_estimator="latency_estimator.pt")  # fmt: skip
    outcome = run_training(config)
    with open(tmp_path / "run" / "training_history.csv", newline="") as f:
        errors = [float(row[LATENCY_ESTIMATE_ERROR_MS]) for row in csv.DictReader(f)]
    assert len(errors) == 2 and all(math.isfinite(e) for e in errors)
    assert outcome.summary["latency_mode"] == "estimated"
    assert math.isfinite(outcome.summary["rows"]["trained controller (epoch 1)"][VAL_ESTIMATE_ABS_ERROR_MS])
