"""The serving metrics: kept without Ray, sent through ray.util.metrics with it."""

import adactrl.orchestration.serve_metrics as metrics_module
from adactrl.orchestration.serve_metrics import (
    IN_FLIGHT,
    LATENCY_MS,
    PLANS_TOTAL,
    QUEUE_MS,
    REQUESTS_TOTAL,
    VIOLATION_RATE,
    ServeMetrics,
)

KNOBS = {"tier": "low", "insertion": 1, "top_k": 4, "num_blocks": 12, "blocks": list(range(12))}


def exercise(metrics: ServeMetrics) -> None:
    metrics.enter()
    metrics.answered("infer", 50.0, 5.0, rejected=False, met=True, knobs=KNOBS)
    metrics.answered("chat", 120.0, 70.0, rejected=False, met=False, knobs=KNOBS)
    metrics.answered("infer", 3.0, 2.0, rejected=True, met=False, knobs=None)
    metrics.bad_request("infer", 1.0)
    metrics.leave()


def test_values_without_ray(monkeypatch):
    monkeypatch.setattr(metrics_module.ray, "is_initialized", lambda: False)
    metrics = ServeMetrics()
    exercise(metrics)
    assert metrics.ledger.to_dict() == {"served": 2, "missed": 1, "rejected": 1, "violation_rate": 0.5}
    assert metrics.values == {IN_FLIGHT: 0, REQUESTS_TOTAL: 4, LATENCY_MS: 1.0, QUEUE_MS: 2.0,
                              VIOLATION_RATE: 0.5, PLANS_TOTAL: 2}  # fmt: skip


def test_the_ray_metrics_are_registered_and_take_values(ray_local):
    metrics = ServeMetrics()
    exercise(metrics)  # raises if a tag or a value does not fit its Ray metric
    registered = metrics_module._ray_metrics()
    assert set(registered) == {REQUESTS_TOTAL, LATENCY_MS, QUEUE_MS, VIOLATION_RATE, IN_FLIGHT, PLANS_TOTAL}
    assert metrics.values[VIOLATION_RATE] == 0.5
