"""The learner actor killed in epoch 2 of 2: a new one starts from the newest checkpoint's state,
the epoch is replayed, and the run ends with the weights of a run nothing interrupted (moved here
from tests/orchestration/test_driver_ray.py, with the fault suite's nothing-lost checks)."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from adactrl.metrics import LEARNER_RESTARTS
from adactrl.orchestration.driver import run_training
from adactrl.training.checkpoints import load_training_checkpoint
from adactrl.training.config import DataConfig
from adactrl.training.events import TrainingObserver
from rollout_workers import load_model
from tests.faults.checks import assert_nothing_lost
from tests.training.helpers import cost_latency, small_config

pytestmark = pytest.mark.usefixtures("ray_local")


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
    # Each step and each epoch once in the histories and in MLflow: the lost steps were dropped and
    # taken again.
    assert_nothing_lost(outcome, steps=8, epochs=2)
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
