"""`adactrl train` on the shared local Ray instance with 2 CPU rollout workers."""

import csv
import functools
import math

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
    WORKER_RESTARTS,
)
from adactrl.training.checkpoints import load_training_checkpoint
from adactrl.training.config import DataConfig
from adactrl.training.driver import run_training
from rollout_workers import load_model
from tests.training.helpers import cost_latency, crash_once_when_armed, small_config, train_tiny_estimator

pytestmark = pytest.mark.usefixtures("ray_local")


def test_ray_training_advances_versions_broadcasts_weights_and_logs_to_mlflow(tmp_path, tiny_model_dir, ray_local):
    ray = ray_local
    config = small_config(tmp_path / "run", tiny_model_dir, num_workers=2, calibration_samples=2)
    published: dict[int, dict[str, torch.Tensor]] = {}
    held: list = []
    backends: list = []

    def watch(backend):
        backends.append(backend)
        publish = backend.publish

        def recording(weights):
            published[weights.version] = weights.state
            return publish(weights)

        backend.publish = recording

    def on_batch(step):
        if step == 4:
            held.extend(ray.get([a.current_weights.remote() for a in backends[0].actors]))

    outcome = run_training(config, latency_fn=cost_latency, backend_hook=watch, on_batch=on_batch)

    # 4 samples / batch 2 = 2 requests per epoch, 2 epochs: 4 updates, one version each.
    assert outcome.state.step == 4
    assert sorted(published) == [0, 1, 2, 3, 4]
    # Each worker holds a version newer than the first, with exactly the state published for it.
    assert len(held) == 2 and all(w.version >= 1 for w in held)
    for weights in held:
        for name, value in published[weights.version].items():
            assert torch.equal(weights.state[name], value), name

    model = load_model(tiny_model_dir, None)
    trained, learner_state, _ = load_training_checkpoint(
        tmp_path / "run" / "checkpoint_epoch_2.pt", model.knob_space, model.hidden_size)
    assert learner_state["version"] == 4
    initial = Controller(ControllerConfig(d_model=model.hidden_size, seed=config.seed), model.knob_space)
    before, after = initial.state_dict(), trained.state_dict()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == name.startswith(("stage1.", "stage2.")), name

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

    def arm(step):
        if step == 1:  # three requests of the epoch are still to run: one of them kills its worker
            (flags / "armed").touch()

    outcome = run_training(config, latency_fn=functools.partial(crash_once_when_armed, str(flags)), on_batch=arm)
    assert (flags / "fired").exists()
    assert outcome.state.step == 4 and outcome.state.worker_restarts == 1
    assert outcome.summary["worker_restarts"] == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "rollout worker" in log and "Ray restarted it (restart 1 in this run)" in log
    history = MlflowClient(outcome.tracking_uri).get_metric_history(outcome.run_id, WORKER_RESTARTS)
    assert history[-1].value == 1


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
