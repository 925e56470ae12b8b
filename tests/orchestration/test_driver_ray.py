"""`adactrl train` on the shared local Ray instance: the learner actor and 2 CPU rollout workers."""

import csv
import functools
import math
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from adactrl.controller import Controller, ControllerConfig
from adactrl.metrics import (
    LATENCY_ESTIMATE_ERROR_MS,
    LEARNER_RESTARTS,
    LOSS_TOTAL,
    POLICY_VERSION,
    VAL_ESTIMATE_ABS_ERROR_MS,
    VAL_REWARD,
    WORKER_RESTARTS,
)
from adactrl.training.checkpoints import load_training_checkpoint
from adactrl.training.config import DataConfig
from adactrl.orchestration.driver import run_training
from adactrl.training.events import TrainingObserver
from rollout_workers import load_model
from tests.training.helpers import cost_latency, crash_once_when_armed, small_config, train_tiny_estimator

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


def test_a_worker_killed_mid_run_is_restarted_and_training_completes(tmp_path, tiny_model_dir):
    flags = tmp_path / "flags"
    flags.mkdir()
    config = small_config(tmp_path / "run", tiny_model_dir, num_workers=2, num_epochs=1,
                          data=DataConfig(num_train_samples=8, num_val_samples=2), budget_range_ms=(3.0, 10.0))

    class Arm(TrainingObserver):
        def on_batch(self, event):
            if event.step == 1:  # three requests of the epoch are still to run: one of them kills its worker
                (flags / "armed").touch()

    outcome = run_training(config, latency_fn=functools.partial(crash_once_when_armed, str(flags)),
                           observers=[Arm()])  # fmt: skip
    assert (flags / "fired").exists()
    assert outcome.state.step == 4 and outcome.state.worker_restarts == 1
    assert outcome.summary["worker_restarts"] == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "rollout worker" in log and "Ray restarted it (restart 1 in this run)" in log
    history = MlflowClient(outcome.tracking_uri).get_metric_history(outcome.run_id, WORKER_RESTARTS)
    assert history[-1].value == 1


def test_a_learner_killed_mid_run_is_restarted_from_the_checkpoint_and_the_run_is_unchanged(
    tmp_path, tiny_model_dir, ray_local
):
    ray = ray_local
    settings = dict(num_workers=2, data=DataConfig(num_train_samples=8, num_val_samples=2),
                    budget_range_ms=(3.0, 10.0))  # fmt: skip
    run_training(small_config(tmp_path / "straight", tiny_model_dir, **settings), local=True, latency_fn=cost_latency)

    class KillLearner(TrainingObserver):
        backend, killed_pid = None, None

        def on_batch(self, event):
            if event.step == 6 and self.killed_pid is None:  # epoch 2 of 2, two of its four updates taken
                self.killed_pid = self.backend.learner_pid
                ray.kill(self.backend.learner)

    killer = KillLearner()
    config = small_config(tmp_path / "killed", tiny_model_dir, **settings)
    outcome = run_training(config, latency_fn=cost_latency, observers=[killer],
                           backend_hook=lambda backend: setattr(killer, "backend", backend))  # fmt: skip

    assert killer.killed_pid is not None and killer.backend.learner_pid != killer.killed_pid
    assert outcome.state.step == 8 and outcome.state.learner_restarts == 1
    assert outcome.summary["learner_restarts"] == 1
    assert "the learner was lost during epoch 2" in (tmp_path / "killed" / "train.log").read_text()
    history = MlflowClient(outcome.tracking_uri).get_metric_history(outcome.run_id, LEARNER_RESTARTS)
    assert max(m.value for m in history) == 1
    # Each step and each epoch once in the histories: the lost steps were dropped and taken again.
    with open(tmp_path / "killed" / "training_history.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, 9))
    with open(tmp_path / "killed" / "validation_history.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2]
    # The replayed epoch is the epoch the learner would have run: the same weights as a run in
    # process that nothing interrupted (the latency is deterministic, the schedule does not depend
    # on timing).
    model = load_model(tiny_model_dir, None)
    a_ctrl, a_learner, _ = load_training_checkpoint(tmp_path / "straight" / "checkpoint_epoch_2.pt",
                                                    model.knob_space, model.hidden_size)  # fmt: skip
    b_ctrl, b_learner, _ = load_training_checkpoint(tmp_path / "killed" / "checkpoint_epoch_2.pt",
                                                    model.knob_space, model.hidden_size)  # fmt: skip
    assert a_learner["version"] == b_learner["version"] == 8
    for name, value in a_ctrl.state_dict().items():
        torch.testing.assert_close(b_ctrl.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


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
