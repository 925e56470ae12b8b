import dataclasses
import math

import pytest
import torch

from adactrl.baselines.estimator import (
    COMPONENTS,
    EstimatedLatency,
    EstimatorConfig,
    _plan_means,
    estimate_error_metrics,
    load_estimator,
    regression_metrics,
    split_by_plan,
    train_estimator,
)
from adactrl.knobs import KnobSpace
from adactrl.metrics import LATENCY_ESTIMATE_ABS_ERROR_MS, LATENCY_ESTIMATE_ERROR_MS
from tests.baselines.helpers import record

SPACE = KnobSpace.from_model(16, 8)
IMAGE_TOKENS = {"low": 9, "medium": 45, "high": 90}


def synthetic_table() -> list:
    """Every plan on 4 samples with a known latency model; samples differ in prompt/output length."""
    rows = []
    for qid, (prompt, output) in enumerate([(5, 1), (7, 2), (6, 3), (8, 4)]):
        for tier, image in IMAGE_TOKENS.items():
            for k in SPACE.top_k_values:
                for n in SPACE.num_blocks_values:
                    vision = 1.0 + 0.05 * image
                    projector = 0.1 + 0.002 * image
                    prefill = 0.002 * n * k * (image + prompt)
                    decode = 0.05 * n * k * (output - 1)
                    rows.append(record(
                        (tier, k, n), qid, 1.0, vision + projector + prefill + decode,
                        num_image_tokens=image, num_prompt_tokens=prompt, num_output_tokens=output,
                        vision_ms=vision, projector_ms=projector, prefill_ms=prefill, decode_ms=decode,
                    ))  # fmt: skip
    return rows


def test_regression_metrics_by_hand():
    # residuals 0, 0, 0, -1: MAE 1/4, RMSE sqrt(1/4) = 0.5; mean 2.5, SS_tot 2.25+0.25+0.25+2.25 = 5,
    # so R² = 1 - 1/5 = 0.8
    m = regression_metrics(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m == pytest.approx({"mae": 0.25, "rmse": 0.5, "r2": 0.8})
    assert math.isnan(regression_metrics(torch.ones(3), torch.full((3,), 2.0))["r2"])


def test_plan_means():
    values = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, 5.0]])
    assert _plan_means(values, ["a", "a", "b"]).tolist() == [[2.0, 1.0], [2.0, 1.0], [10.0, 5.0]]


def test_split_holds_out_whole_plans():
    rows = synthetic_table()
    train, held = split_by_plan(rows, 0.2, seed=0)
    assert sorted(train + held) == list(range(len(rows)))
    held_plans = {rows[i].plan for i in held}
    assert len(held_plans) == 15  # 20% of 75 plans, every sample of each
    assert held_plans.isdisjoint(rows[i].plan for i in train)
    with pytest.raises(ValueError, match="at least 2 plans"):
        split_by_plan(rows[:1], 0.2, seed=0)


def test_learns_a_tiny_table_and_round_trips(tmp_path):
    from adactrl.baselines.estimator import save_estimator

    rows = synthetic_table()
    model, metrics = train_estimator(rows, SPACE, EstimatorConfig(steps=800, lr=1e-2))
    for name in (*COMPONENTS, "total"):
        assert metrics[name]["r2"] > 0.95, (name, metrics[name])
        assert metrics[name]["plan_mean_r2"] <= 1.0
    assert metrics["split"]["held_out_plans"] == 15

    save_estimator(tmp_path / "est.pt", model, metrics)
    hook = EstimatedLatency.load(tmp_path / "est.pt", expected_knob_space=SPACE)
    plan = SPACE.plan("high", 1, 8, 16, tuple(range(16, 0, -1)))
    est = hook.latency_ms(plan, num_image_tokens=90, num_prompt_tokens=6, num_output_tokens=3)
    assert set(est) == {*COMPONENTS, "total"}
    assert est["total"] == pytest.approx(sum(est[c] for c in COMPONENTS))
    truth = (1.0 + 4.5) + (0.1 + 0.18) + 0.002 * 128 * 96 + 0.05 * 128 * 2
    assert est["total"] == pytest.approx(truth, rel=0.15)
    with pytest.raises(ValueError, match="another KnobSpace"):
        load_estimator(tmp_path / "est.pt", expected_knob_space=dataclasses.replace(SPACE, top_k_values=(8,)))


def test_error_metrics_and_bad_input():
    # errors +2 and -1: mean signed 0.5, mean absolute 1.5
    assert estimate_error_metrics([12.0, 9.0], [10.0, 10.0]) == {
        LATENCY_ESTIMATE_ERROR_MS: 0.5, LATENCY_ESTIMATE_ABS_ERROR_MS: 1.5
    }
    with pytest.raises(ValueError, match="empty"):
        train_estimator([], SPACE)
    with pytest.raises(ValueError, match="tiers"):
        train_estimator([record(("ultra", 4, 12), 0, 1.0, 5.0), record(("low", 4, 12), 0, 1.0, 5.0)], SPACE)
