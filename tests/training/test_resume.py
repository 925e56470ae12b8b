"""Resume continues exactly: a run killed mid-way through its second epoch and resumed equals the
uninterrupted run; a resume with other training flags is refused, naming each.

Deterministic by design: the run goes through the same driver and loop code as `adactrl train`
but with in-process workers (`run_training(local=True)`, which runs requests in submission
order) and with `cost_latency`, a latency computed from the plan instead of measured, because
measured latency enters the reward and would differ between any two runs. Plan sampling is
seeded per request and budgets per (seed, epoch, request), so nothing else varies.
"""

import csv
import dataclasses

import pytest
import torch

from adactrl.training.checkpoints import load_training_checkpoint
from adactrl.orchestration.driver import run_training
from adactrl.reward import RewardConfig
from adactrl.training.events import TrainingObserver
from rollout_workers import load_model
from tests.training.helpers import cost_latency, small_config


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Killed(Exception):
    pass


class KillAtStep(TrainingObserver):
    """Stops the run after the learner update of `step`, as a kill would (no epoch-end bookkeeping)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch(self, event):
        if event.step == self.step:
            raise Killed


def test_resume_after_a_kill_equals_uninterrupted(tmp_path, tiny_model_dir):
    straight = small_config(tmp_path / "straight", tiny_model_dir, num_epochs=2)
    run_training(straight, local=True, latency_fn=cost_latency)

    # Killed mid-way through epoch 2 (step 3 of 4): the newest checkpoint is epoch 1's (step 2).
    with pytest.raises(Killed):
        run_training(dataclasses.replace(straight, output_dir=str(tmp_path / "resumed")), local=True,
                     latency_fn=cost_latency, observers=[KillAtStep(3)])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint_*.pt")) == ["checkpoint_epoch_1.pt"]
    resumed = small_config(tmp_path / "resumed", tiny_model_dir, num_epochs=2, resume=True)
    outcome = run_training(resumed, local=True, latency_fn=cost_latency)
    assert outcome.state.step == 4

    model = load_model(tiny_model_dir, None)
    a_ctrl, a_learner, a_state = load_training_checkpoint(
        tmp_path / "straight" / "checkpoint_epoch_2.pt", model.knob_space, model.hidden_size)
    b_ctrl, b_learner, b_state = load_training_checkpoint(
        tmp_path / "resumed" / "checkpoint_epoch_2.pt", model.knob_space, model.hidden_size)
    for name, value in a_ctrl.state_dict().items():
        torch.testing.assert_close(b_ctrl.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert a_learner["version"] == b_learner["version"] == 4
    for i, moments in a_learner["optimizer"]["state"].items():
        torch.testing.assert_close(b_learner["optimizer"]["state"][i]["exp_avg"], moments["exp_avg"], rtol=0, atol=1e-6)
    assert a_learner["scheduler"]["best"] == pytest.approx(b_learner["scheduler"]["best"])
    assert (a_state.step, a_state.epoch, a_state.best_epoch) == (b_state.step, b_state.epoch, b_state.best_epoch)
    assert a_state.budget_range == b_state.budget_range

    # The histories agree row for row: the resumed run replayed nothing and skipped nothing.
    for name in ("training_history.csv", "validation_history.csv"):
        a_rows = _rows(tmp_path / "straight" / name)
        b_rows = _rows(tmp_path / "resumed" / name)
        assert [r["step"] for r in a_rows] == [r["step"] for r in b_rows]
        for a, b in zip(a_rows, b_rows):
            key = "reward/total" if "reward/total" in a else "val/reward"
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-9)


def test_resume_with_changed_training_flags_is_refused_naming_each(tmp_path, tiny_model_dir):
    run_training(small_config(tmp_path / "run", tiny_model_dir, num_epochs=1), local=True, latency_fn=cost_latency)
    changed = small_config(tmp_path / "run", tiny_model_dir, num_epochs=2, resume=True, batch_size=4,
                           reward=dataclasses.replace(RewardConfig(), beta=0.25))  # fmt: skip
    with pytest.raises(ValueError, match="other settings") as refused:
        run_training(changed, local=True, latency_fn=cost_latency)
    message = str(refused.value)
    assert "--batch_size 2 (now 4)" in message and f"--beta {RewardConfig().beta} (now 0.25)" in message
    assert "--num_epochs" not in message and "--allow_config_change" in message

    # Outputs and length may change freely; --allow_config_change continues with the new flags.
    longer = small_config(tmp_path / "run", tiny_model_dir, num_epochs=2, resume=True, batch_size=4,
                          allow_config_change=True)  # fmt: skip
    assert run_training(longer, local=True, latency_fn=cost_latency).state.epoch == 2


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import learner.learner as learner_module
    from learner import NonFiniteError

    run_training(small_config(tmp_path / "run", tiny_model_dir, num_epochs=1), local=True, latency_fn=cost_latency)
    saved = {p.name: p.read_bytes() for p in (tmp_path / "run").glob("*.pt")}
    assert set(saved) == {"checkpoint_epoch_1.pt", "best_model.pt"}

    real_loss = learner_module.compute_loss
    monkeypatch.setattr(learner_module, "compute_loss",
                        lambda **kw: dataclasses.replace(out := real_loss(**kw), loss=out.loss * float("nan")))
    resumed = small_config(tmp_path / "run", tiny_model_dir, num_epochs=2, resume=True)
    with pytest.raises(NonFiniteError, match="last checkpoint is intact"):
        run_training(resumed, local=True, latency_fn=cost_latency)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").glob("*.pt")} == saved
