"""The rollout worker built directly, without Ray, on the tiny model."""

import datasets
import numpy as np
import pytest
import torch

from adactrl.controller import Controller, ControllerConfig
from adactrl.data import VQA_FEATURES
from adactrl.knobs import KnobSpace
from adactrl.reward import RewardConfig
from adactrl.training.config import DataConfig, WorkerConfig
from adactrl.training.records import CHECKED_TOTAL, COMPOSED_TOTAL, EvalRequest, RolloutRequest
from rollout_workers import RolloutWorker, load_model
from tests.training.helpers import cost_latency


@pytest.fixture(scope="module")
def worker(tiny_model_dir) -> RolloutWorker:
    model = load_model(tiny_model_dir, None)
    config = WorkerConfig(
        controller=ControllerConfig(d_model=model.hidden_size, seed=0),
        data=DataConfig(num_train_samples=4, num_val_samples=2),
        reward=RewardConfig(),
        model_path=tiny_model_dir,
    )
    w = RolloutWorker(config, 1, latency_fn=cost_latency)
    state = Controller(config.controller, w.model.knob_space).state_dict()
    w.load_weights(0, state)
    return w


def request(**overrides) -> RolloutRequest:
    values = dict(epoch=1, request_id=0, sample_indices=(0, 1), budgets_ms=(5.0, 8.0), group_size=3,
                  policy_version=0, seed=123)  # fmt: skip
    return RolloutRequest(**(values | overrides))


def test_rollout_records_are_typed_complete_and_versioned(worker):
    batch = worker.rollout(request())
    space: KnobSpace = worker.model.knob_space
    assert len(batch.records) == 2 * 3 and not batch.skipped
    assert (batch.policy_version, batch.worker_index, batch.epoch) == (0, 1, 1)
    for record in batch.records:
        assert record.policy_version == 0 and record.worker_index == 1
        assert all(0 <= a < n for a, n in zip(record.actions, space.sizes))
        assert record.language_feature.shape == record.latency_token.shape == (worker.model.hidden_size,)
        assert record.language_feature.dtype == np.float32 and np.isfinite(record.latency_token).all()
        assert record.old_logp < 0 and record.latency_ms["total"] > 0
        r = record.reward
        assert r.total == pytest.approx(r.accuracy + r.latency + r.violation + r.efficiency + r.complexity + r.miss)
    # The stored old log-prob is what the controller gives the stored inputs: re-scoring needs no VLM.
    r0 = batch.records[0]
    logp, _ = worker.controller.log_prob(torch.tensor([r0.actions]), torch.from_numpy(r0.language_feature)[None],
                                         torch.tensor([r0.budget_ms]), torch.from_numpy(r0.latency_token)[None])  # fmt: skip
    assert float(logp.detach()) == pytest.approx(r0.old_logp, abs=1e-5)
    assert [r.group_key for r in batch.records] == [(0, 5.0)] * 3 + [(1, 8.0)] * 3


def test_sampling_follows_the_request_seed(worker):
    same = [tuple(r.actions for r in worker.rollout(request(seed=7)).records) for _ in range(2)]
    other = tuple(r.actions for r in worker.rollout(request(seed=8, group_size=8)).records)
    assert same[0] == same[1]
    assert other[:3] != same[0] or other[3:6] != same[0][3:]


def test_a_request_for_another_version_is_refused(worker):
    with pytest.raises(RuntimeError, match="send the weights"):
        worker.rollout(request(policy_version=5))


def test_bad_samples_are_skipped_and_counted_not_scored(worker, monkeypatch):
    good = worker.splits["train"][0]
    corrupt = dict(good, image={"bytes": b"\x89PNG\r\n\x1a\n not an image", "path": None})
    empty = dict(good, answers=[])
    # A real datasets.Dataset: the corrupt image fails when the row is decoded, as a cached one would.
    rows = datasets.Dataset.from_list([good, corrupt, empty], features=VQA_FEATURES)
    monkeypatch.setitem(worker.splits, "train", rows)
    batch = worker.rollout(request(sample_indices=(0, 1, 2), budgets_ms=(5.0, 5.0, 5.0)))
    assert {s.sample_id for s in batch.skipped} == {1, 2}
    assert all(r.sample_id == 0 for r in batch.records) and len(batch.records) == 3
    reasons = {s.sample_id: s.reason for s in batch.skipped}
    assert "answers" in reasons[2] and "sample 1" in reasons[1]


def test_greedy_evaluation_is_deterministic_and_weights_round_trip(worker):
    req = EvalRequest(sample_indices=(0, 1), budgets_ms=(4.0, 9.0), policy_version=0)
    a, b = worker.evaluate(req), worker.evaluate(req)
    assert len(a.records) == 4 and [r.knobs for r in a.records] == [r.knobs for r in b.records]
    held = worker.current_weights()
    assert held.version == 0
    assert all(torch.equal(v, worker.controller.state_dict()[k]) for k, v in held.state.items())


def test_calibration_measures_cheapest_and_full_plans(worker):
    result = worker.calibrate((0, 1))
    # cost_latency: cheapest (low tier, 6 blocks at top-k 2) is far below full (high tier, 8 blocks at top-k 4)
    assert len(result.cheapest_ms) == len(result.full_ms) == 2
    assert max(result.cheapest_ms) < min(result.full_ms)
    assert worker.split_sizes() == {"train": 4, "validation": 2}


def test_shared_and_per_plan_modes_run_the_same_plans_with_the_same_results(worker):
    # sample 0 under two budgets (shared mode serves both from one prefix), sample 1 under one
    req = dict(sample_indices=(0, 0, 1), budgets_ms=(5.0, 8.0, 6.0), group_size=3, seed=41)
    shared = worker.rollout(request(**req, rollout_mode="shared")).records
    alone = worker.rollout(request(**req, rollout_mode="per_plan")).records
    assert len(shared) == len(alone) == 9
    for s, a in zip(shared, alone):
        assert (s.sample_id, s.budget_ms, s.actions, s.old_logp) == (a.sample_id, a.budget_ms, a.actions, a.old_logp)
        assert s.accuracy == a.accuracy and s.complexity == a.complexity
        assert s.family == a.family == worker.splits["train"][s.sample_id]["family"] != ""
        assert np.array_equal(s.language_feature, a.language_feature) and np.array_equal(s.latency_token, a.latency_token)
        assert s.total_ms == a.total_ms  # cost_latency: a function of the plan and the token counts
    assert len({r.actions for r in shared}) > 1
    assert worker.overhead_ms is not None and worker.overhead_ms == worker.overhead_ms  # measured, not NaN


@pytest.mark.parametrize(("every", "checked"), [(0, 0), (1, 6), (2, 3), (4, 1)])
def test_composition_check_runs_every_nth_plan_end_to_end(worker, every, checked):
    batch = worker.rollout(request(composition_check_every=every, request_id=1))
    marked = [r for r in batch.records if COMPOSED_TOTAL in r.latency_ms]
    # plans n = 0..5 of request 1: checked where (n + 1) % every == 0
    assert len(marked) == checked
    assert all(CHECKED_TOTAL in r.latency_ms for r in marked)
    assert all(r.latency_ms[COMPOSED_TOTAL] > 0 and r.latency_ms[CHECKED_TOTAL] > 0 for r in marked)


def test_a_request_with_an_unknown_mode_or_a_negative_check_is_refused():
    with pytest.raises(ValueError, match="rollout_mode must be 'shared' or 'per_plan'"):
        request(rollout_mode="batched")
    with pytest.raises(ValueError, match="composition_check_every must be >= 0"):
        request(composition_check_every=-1)
