"""A replica's engine on the shipped model: the budget left after the wait goes to the controller;
too little left is refused without model time, or run at the cheapest plan with best_effort."""

import time
from types import SimpleNamespace

import pytest

from adactrl.controller import Controller, ControllerConfig
from adactrl.serving.budget import CHEAPEST, CONTROLLER, REJECTED
from adactrl.serving.engine import ServingEngine
from adactrl.serving.requests import RequestError, parse_infer_json
from tests.serving.test_requests import infer


@pytest.fixture(scope="module")
def engine(shipped_model) -> ServingEngine:
    controller = Controller(ControllerConfig(d_model=shipped_model.hidden_size, seed=0), shipped_model.knob_space)
    return ServingEngine(shipped_model, controller, calibration_runs=3)


def test_the_cheapest_plan_is_calibrated_at_start(engine):
    space = engine.model.knob_space
    assert (engine.cheapest.tier, engine.cheapest.top_k, engine.cheapest.num_blocks) == (
        space.tiers[0], space.top_k_values[0], space.num_blocks_values[0])  # fmt: skip
    assert 0 < engine.cheapest_ms < 10_000


def test_a_request_runs_with_the_budget_its_wait_left(engine):
    request = parse_infer_json(infer(budget_ms=60_000))
    outcome = engine.answer(request, arrived_s=time.time() - 0.5)  # it waited half a second
    assert outcome.admission.plan == CONTROLLER and outcome.answer
    assert outcome.queue_ms >= 500 and outcome.admission.remaining_ms == pytest.approx(60_000 - outcome.queue_ms)
    assert set(outcome.stages_ms) == {"controller", "vision", "projector", "prefill_pre", "prefill_post", "decode"}
    assert 0 < sum(outcome.stages_ms.values()) <= outcome.model_ms + 1.0
    assert outcome.completion_tokens <= 4 and outcome.image_tokens > 0


def test_too_little_left_is_refused_at_once_or_run_cheapest_with_best_effort(engine):
    budget = engine.cheapest_ms + 50.0
    late = time.time() - 0.1  # 100 ms in the queue leaves less than the cheapest plan needs
    refused = engine.answer(parse_infer_json(infer(budget_ms=budget)), late)
    assert refused.rejected and refused.knobs is None and refused.model_ms == 0.0
    assert refused.admission.plan == REJECTED and refused.admission.retry_after_s == 1
    served = engine.answer(parse_infer_json(infer(budget_ms=budget, best_effort=True)), late)
    assert served.admission.plan == CHEAPEST and served.knobs == engine.cheapest.to_dict()


def test_a_word_the_model_does_not_know_is_a_bad_request(engine):
    with pytest.raises(RequestError, match="zebra"):
        engine.answer(parse_infer_json(infer(prompt="what color is the zebra ?", budget_ms=60_000)), time.time())


def test_calibration_repeats_until_two_rounds_agree(engine, monkeypatch):
    # a first round timed while the machine was busy (100 ms), then 30 and 31 ms: agreed, 31 kept
    times = iter([5.0] + [100.0] * 3 + [30.0] * 3 + [31.0] * 3)
    monkeypatch.setattr(engine, "_run_cheapest", lambda *args: SimpleNamespace(total_ms=next(times)))
    assert engine.calibrate(3) == 31.0
    steady = iter([5.0] + [40.0] * 3 + [41.0] * 3)
    monkeypatch.setattr(engine, "_run_cheapest", lambda *args: SimpleNamespace(total_ms=next(steady)))
    assert engine.calibrate(3) == 41.0  # two rounds when the first already agrees with the second


def test_below_the_controllers_training_range_the_cheapest_plan_runs(engine, monkeypatch):
    monkeypatch.setattr(engine, "trained_low_ms", 50_000.0)  # trained on budgets of 50 s and more
    outcome = engine.answer(parse_infer_json(infer(budget_ms=40_000)), time.time())
    assert outcome.admission.plan == CHEAPEST and outcome.knobs == engine.cheapest.to_dict() and outcome.answer
    assert engine.answer(parse_infer_json(infer(budget_ms=60_000)), time.time()).admission.plan == CONTROLLER


def test_the_admission_threshold_follows_the_cheapest_plan_when_the_machine_slows(engine, monkeypatch):
    monkeypatch.setattr(engine, "calibrated_ms", 20.0)
    monkeypatch.setattr(engine, "recent_cheapest", type(engine.recent_cheapest)(maxlen=engine.recent_cheapest.maxlen))
    engine.recent_cheapest.extend([60.0] * 4)
    assert engine.cheapest_ms == 20.0  # too few runs to say
    engine.recent_cheapest.append(60.0)
    assert engine.cheapest_ms == 60.0  # the machine slowed: 60 ms is what the cheapest plan takes now
    engine.recent_cheapest.extend([10.0] * engine.recent_cheapest.maxlen)
    assert engine.cheapest_ms == 20.0  # never below the calibrated p95
