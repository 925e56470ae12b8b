import math

import numpy as np
import pytest

from adactrl.training.loop import request_seed, split_evenly
from adactrl.training.records import BudgetRange, CalibrationResult, RolloutRequest


def test_budget_range_calibrates_from_the_p95_with_the_margin():
    results = [CalibrationResult((10.0, 12.0, 11.0), (40.0, 44.0, 42.0), 0, 1, "cpu"),
               CalibrationResult((11.0,), (41.0,), 1, 1, "cpu")]  # fmt: skip
    budget = BudgetRange.calibrate(results, margin=1.1)
    # nearest-rank p95 over both workers' 4 runs, sorted[int(3.8)]: cheapest (10, 11, 11, 12) -> 12,
    # full (40, 41, 42, 44) -> 44; times 1.1 -> 13.2 and 48.4
    assert (budget.cheapest_ms, budget.full_ms) == (12.0, 44.0)
    assert budget.low_ms == pytest.approx(13.2) and budget.high_ms == pytest.approx(48.4)
    # the milliseconds belong to the workers' thread count and device, recorded with the range
    assert (budget.num_threads, budget.device) == (1, "cpu")
    assert BudgetRange(**budget.to_dict()) == budget


def test_budget_range_refuses_flat_latencies():
    with pytest.raises(ValueError, match="not slower"):
        BudgetRange.calibrate([CalibrationResult((20.0,), (19.0,), 0)], margin=1.1)
    with pytest.raises(ValueError, match="0 < low < high"):
        BudgetRange(30.0, 10.0)


def test_budgets_are_log_uniform_in_range_and_quantiles_fixed():
    budget = BudgetRange(10.0, 1000.0)
    draws = np.array(budget.sample(np.random.default_rng(0), 4000))
    assert draws.min() >= 10.0 and draws.max() <= 1000.0
    # log-uniform: half the draws fall below the geometric midpoint 100 ms
    assert abs((draws < 100.0).mean() - 0.5) < 0.03
    # quantiles at (i + 0.5) / 4 of the log range: 10 * 100^(1/8, 3/8, 5/8, 7/8)
    expected = [10 * 100 ** (q / 8) for q in (1, 3, 5, 7)]
    assert budget.quantiles(4) == pytest.approx(expected, abs=1e-3)


def test_request_plumbing():
    with pytest.raises(ValueError, match="one budget per sample"):
        RolloutRequest(0, 0, (1, 2), (10.0,), 4, 0, 1)
    assert split_evenly([0, 1, 2, 3, 4], 2) == [(0, 2, 4), (1, 3)]
    assert request_seed(0, 1, 2) == request_seed(0, 1, 2) != request_seed(0, 1, 3)
    assert not math.isnan(request_seed(5, 0, 0))
