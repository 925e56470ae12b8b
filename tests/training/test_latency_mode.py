"""`adactrl train --latency_mode estimated`: the training reward's latency is the latency
estimator's stage total plus the measured controller time, every record keeps the measured latency
too, and the estimator's error is logged per batch, per epoch and in the summary. Measured mode
(the default) logs none of it. Bad estimators and a resume in another mode fail before any rollout.
"""

import csv
import json
import math
import shutil
import statistics

import pytest
from mlflow.tracking import MlflowClient

import adactrl.orchestration.driver as driver
from adactrl.baselines.estimator import EstimatedLatency
from adactrl.controller import Controller, ControllerConfig
from adactrl.controller.policy import actions_to_knobs
from adactrl.executor import StaticPolicy, execute
from adactrl.knobs import KnobSpace
from adactrl.metrics import (
    LATENCY_ESTIMATE_ABS_ERROR_MS,
    LATENCY_ESTIMATE_ERROR_MS,
    REWARD_TOTAL,
    ROLLOUT_ESTIMATE_ABS_ERROR_MS,
    ROLLOUT_ESTIMATE_ERROR_MS,
    VAL_ESTIMATE_ABS_ERROR_MS,
    VAL_ESTIMATE_ERROR_MS,
    VAL_REWARD,
)
from adactrl.reward import RewardConfig, compute_reward
from adactrl.training.checkpoints import load_training_checkpoint
from adactrl.orchestration.driver import run_training
from adactrl.training.records import ESTIMATED_TOTAL, MEASURED_TOTAL
from adactrl.training.rollout import (
    EstimatedRunLatency,
    load_split,
    plan_complexity,
    prepare_sample,
    run_controller_plan,
)
from tests.training.helpers import cost_latency, small_config, train_tiny_estimator

ESTIMATE_KEYS = (LATENCY_ESTIMATE_ERROR_MS, LATENCY_ESTIMATE_ABS_ERROR_MS, ROLLOUT_ESTIMATE_ERROR_MS,
                 ROLLOUT_ESTIMATE_ABS_ERROR_MS, VAL_ESTIMATE_ERROR_MS, VAL_ESTIMATE_ABS_ERROR_MS)  # fmt: skip


@pytest.fixture(scope="module")
def estimator_path(tmp_path_factory, tiny_model):
    return train_tiny_estimator(tmp_path_factory.mktemp("estimator") / "latency_estimator.pt", tiny_model.knob_space)


@pytest.fixture
def forbid_rollouts(monkeypatch):
    """Call it to fail the test if a run then gets as far as creating rollout workers."""

    def refuse(*args, **kwargs):
        raise AssertionError("rollout workers were created: the bad setting was not caught first")

    return lambda: monkeypatch.setattr(driver, "_backend", refuse)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _estimated_stages(path, result) -> float:
    """The estimator's total over the stages of a run's plan and token counts (no controller time)."""
    est = EstimatedLatency.load(path).latency_ms(result.plan, result.num_image_tokens, result.num_prompt_tokens,
                                                 len(result.token_ids))  # fmt: skip
    return est["total"]


def test_a_plan_run_keeps_both_latencies_and_rewards_the_chosen_one(tiny_model, estimator_path):
    space = tiny_model.knob_space
    controller = Controller(ControllerConfig(d_model=tiny_model.hidden_size, seed=0), space).eval()
    sample = prepare_sample(load_split(("synthetic",), "train", 2, 0), 0, tiny_model)
    estimate_fn = EstimatedRunLatency.load(estimator_path, space)
    config = RewardConfig()
    for reward_on_estimate in (True, False):
        out = run_controller_plan(
            tiny_model, controller, sample, 8.0, greedy=True, generator=None, reward_config=config,
            latency_fn=cost_latency, estimate_fn=estimate_fn, reward_on_estimate=reward_on_estimate,
        )  # fmt: skip
        estimated = _estimated_stages(estimator_path, out.result) + out.result.latency_ms["controller"]
        measured = cost_latency(out.result)
        assert out.latency_ms[ESTIMATED_TOTAL] == pytest.approx(estimated, abs=1e-9)
        assert out.latency_ms[MEASURED_TOTAL] == measured != pytest.approx(estimated)
        assert out.latency_ms["total"] == pytest.approx(estimated if reward_on_estimate else measured, abs=1e-9)
        complexity = plan_complexity(out.result.plan, space)
        assert out.reward == compute_reward(out.accuracy, out.latency_ms["total"], 8.0, complexity, config)

    # Without an estimate nothing is added: measured mode's records are as they were.
    out = run_controller_plan(tiny_model, controller, sample, 8.0, greedy=True, generator=None, reward_config=config,
                              latency_fn=cost_latency)  # fmt: skip
    assert ESTIMATED_TOTAL not in out.latency_ms and out.latency_ms["total"] == cost_latency(out.result)


def test_estimated_training_rewards_the_estimate_and_logs_its_error(tmp_path, tiny_model_dir, estimator_path, caplog):
    config = small_config(tmp_path / "run", tiny_model_dir, num_epochs=1, latency_mode="estimated",
                          latency_estimator=str(estimator_path))  # fmt: skip
    batches, workers = [], []

    def capture(backend):
        workers.extend(backend.workers)
        for worker in backend.workers:

            def recording(request, rollout=worker.rollout):
                batches.append(rollout(request))
                return batches[-1]

            worker.rollout = recording

    outcome = run_training(config, local=True, backend_hook=capture)  # measured latency: the real clock

    # A record's reward latency is the estimator's value for its plan and tokens + its controller time.
    worker = workers[0]
    space = worker.model.knob_space
    for record in batches[0].records[:2]:
        plan = space.plan(*actions_to_knobs(space, record.actions), worker.model.importance)
        sample = prepare_sample(worker.splits["train"], record.sample_id, worker.model)
        result = execute(worker.model, sample.image, sample.question, StaticPolicy(plan),
                         max_new_tokens=config.max_new_tokens)  # same plan, same token counts  # fmt: skip
        expected = _estimated_stages(estimator_path, result) + record.latency_ms["controller"]
        assert record.latency_ms["total"] == record.latency_ms[ESTIMATED_TOTAL] == pytest.approx(expected, abs=1e-9)
        assert record.reward.latency == pytest.approx(-config.reward.beta * expected / record.budget_ms)
        assert record.latency_ms[MEASURED_TOTAL] > 0

    # Per batch, in the training history (and MLflow) next to the reward: mean and mean |error|.
    errors = [[r.latency_ms[ESTIMATED_TOTAL] - r.latency_ms[MEASURED_TOTAL] for r in b.records] for b in batches]
    history = _rows(tmp_path / "run" / "training_history.csv")
    assert len(history) == len(batches) == 2
    for row, batch_errors in zip(history, errors):
        assert REWARD_TOTAL in row
        assert float(row[LATENCY_ESTIMATE_ERROR_MS]) == pytest.approx(statistics.fmean(batch_errors))
        assert float(row[LATENCY_ESTIMATE_ABS_ERROR_MS]) == pytest.approx(statistics.fmean(map(abs, batch_errors)))

    # Per epoch: over the epoch's rollouts and over each validation pass, in MLflow, the validation
    # history and the epoch's log line, next to the validation reward.
    client = MlflowClient(outcome.tracking_uri)
    logged = {key: [m.value for m in client.get_metric_history(outcome.run_id, key)] for key in ESTIMATE_KEYS}
    assert all(values and all(math.isfinite(v) for v in values) for values in logged.values()), logged
    flat = [e for batch_errors in errors for e in batch_errors]
    assert logged[ROLLOUT_ESTIMATE_ERROR_MS] == [pytest.approx(statistics.fmean(flat))]
    assert logged[ROLLOUT_ESTIMATE_ABS_ERROR_MS] == [pytest.approx(statistics.fmean(map(abs, flat)))]
    assert len(logged[VAL_ESTIMATE_ERROR_MS]) == 2  # the untrained policy (epoch 0) and epoch 1
    val_rows = _rows(tmp_path / "run" / "validation_history.csv")
    assert {VAL_REWARD, ROLLOUT_ESTIMATE_ERROR_MS, VAL_ESTIMATE_ERROR_MS} <= set(val_rows[1])
    epoch_line = next(m for m in caplog.messages if m.startswith("validation epoch 1"))
    assert f"{ROLLOUT_ESTIMATE_ERROR_MS}=" in epoch_line and f"{VAL_ESTIMATE_ABS_ERROR_MS}=" in epoch_line
    assert client.get_run(outcome.run_id).data.params["latency_mode"] == "estimated"

    # In the summary, and the checkpoint records the mode for resume.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["latency_mode"] == "estimated" and "est. error ms" in summary["table"]
    assert VAL_ESTIMATE_ERROR_MS in summary["rows"]["trained controller (epoch 1)"]
    _, _, state = load_training_checkpoint(tmp_path / "run" / "checkpoint_epoch_1.pt", space, worker.model.hidden_size)
    assert (state.latency_mode, state.latency_estimator) == ("estimated", str(estimator_path.resolve()))

    # Resuming in measured mode is refused, with the flags that would resume it.
    with pytest.raises(ValueError, match=r"trained with --latency_mode estimated.*--latency_estimator"):
        run_training(small_config(tmp_path / "run", tiny_model_dir, num_epochs=2, resume=True), local=True)

    # The same estimator at another path resumes (it may have moved), with a warning.
    moved = shutil.copy(estimator_path, tmp_path / "moved.pt")
    resumed = small_config(tmp_path / "run", tiny_model_dir, num_epochs=2, resume=True, latency_mode="estimated",
                           latency_estimator=str(moved))  # fmt: skip
    assert run_training(resumed, local=True).state.epoch == 2
    assert any("the run so far used" in m for m in caplog.messages)
    _, _, state = load_training_checkpoint(tmp_path / "run" / "checkpoint_epoch_2.pt", space, worker.model.hidden_size)
    assert state.latency_estimator == str(moved)


def test_measured_runs_log_no_estimate_and_resume_in_their_mode(tmp_path, tiny_model_dir, estimator_path,
                                                                 forbid_rollouts):
    outcome = run_training(small_config(tmp_path / "run", tiny_model_dir, num_epochs=1), local=True,
                           latency_fn=cost_latency)  # fmt: skip
    for name in ("training_history.csv", "validation_history.csv"):
        columns = _rows(tmp_path / "run" / name)[0]
        assert not [c for c in columns if "estimate" in c], name
    assert outcome.summary["latency_mode"] == "measured" and "est. error" not in outcome.summary["table"]

    forbid_rollouts()
    resumed = small_config(tmp_path / "run", tiny_model_dir, num_epochs=2, resume=True, latency_mode="estimated",
                           latency_estimator=str(estimator_path))  # fmt: skip
    with pytest.raises(ValueError, match=r"trained with --latency_mode measured, not estimated; resume with "
                                         r"--latency_mode measured"):  # fmt: skip
        run_training(resumed, local=True)


@pytest.mark.parametrize("kind", ["not a checkpoint", "another KnobSpace"])
def test_an_unusable_estimator_fails_before_any_rollout(kind, tmp_path, tiny_model_dir, forbid_rollouts):
    forbid_rollouts()
    path = tmp_path / "latency_estimator.pt"
    if kind == "not a checkpoint":
        path.write_text("a profile table, say\n")
        message = "is not a readable latency estimator checkpoint"
    else:
        train_tiny_estimator(path, KnobSpace.from_model(16, 8))
        message = "was made for another KnobSpace"
    config = small_config(tmp_path / "run", tiny_model_dir, latency_mode="estimated", latency_estimator=str(path))
    with pytest.raises(ValueError, match=message) as err:
        run_training(config, local=True)
    assert "run `adactrl baselines --profile PROFILE" in str(err.value)
    assert not (tmp_path / "mlflow.db").exists()  # it failed before an MLflow run was opened
