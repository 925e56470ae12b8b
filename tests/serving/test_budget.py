"""The end-to-end budget: the wait counts, and too little left is refused or run at the cheapest plan."""

import pytest

from adactrl.serving.budget import (
    CHEAPEST,
    CONTROLLER,
    REJECTED,
    Admission,
    BudgetLedger,
    QueueModel,
    admit,
    retry_after_s,
)


def test_the_controller_plans_for_what_the_wait_left():
    # budget 100, waited 30, cheapest 20: 70 left >= 20
    assert admit(100.0, 30.0, 20.0, best_effort=False) == Admission(CONTROLLER, 70.0)
    # exactly the cheapest plan's latency left is still enough
    assert admit(100.0, 80.0, 20.0, best_effort=False).plan == CONTROLLER


def test_too_little_left_is_refused_or_run_at_the_cheapest_plan():
    # budget 100, waited 90, cheapest 20: 10 left < 20
    assert admit(100.0, 90.0, 20.0, best_effort=False) == Admission(REJECTED, 10.0, 1)
    assert admit(100.0, 90.0, 20.0, best_effort=True) == Admission(CHEAPEST, 10.0)
    # a budget below the cheapest plan is refused even with no wait
    assert admit(15.0, 0.0, 20.0, best_effort=False).plan == REJECTED


@pytest.mark.parametrize(("waited_ms", "seconds"), [(0.0, 1), (900.0, 1), (1000.0, 1), (2300.0, 3)])
def test_retry_after_is_the_wait_in_whole_seconds_at_least_one(waited_ms, seconds):
    assert retry_after_s(waited_ms) == seconds


def test_the_ledger_counts_violations_among_served_requests_only():
    ledger = BudgetLedger()
    assert ledger.violation_rate == 0.0
    ledger.record(met=True)
    ledger.record(met=False)
    ledger.record(met=True)
    ledger.record(rejected=True)  # a 429 is no violation: no answer went out late
    assert ledger.to_dict() == {"served": 3, "missed": 1, "rejected": 1, "violation_rate": 1 / 3}


def test_the_queue_model_expects_a_wait_only_beyond_a_free_replica():
    queue = QueueModel(replicas=2)
    queue.observe(service_ms=40.0, model_ms=30.0)  # the first observation is taken as it is
    assert (queue.service_ms, queue.overhead_ms) == (40.0, 10.0)
    queue.outstanding = 1
    assert queue.expected_wait_ms() == 0.0  # a replica is free
    queue.outstanding = 3
    assert queue.expected_wait_ms() == 40.0  # (3 - 2 + 1) * 40 / 2
    queue.observe(service_ms=90.0, model_ms=50.0)  # moving averages: 40 + 0.2 * 50, 10 + 0.2 * 30
    assert (queue.service_ms, queue.overhead_ms) == pytest.approx((50.0, 16.0))
