"""Live serving metrics for the Ray dashboard and Prometheus, through `ray.util.metrics`, as the
training metrics (`adactrl.orchestration.dashboard`) go:

    adactrl_serve_requests_total   requests answered, tagged route and outcome (met, missed,
                                   rejected: a 429, bad_request: a 4xx before the model)
    adactrl_serve_latency_ms       end-to-end latency at the ingress (histogram), route and outcome
    adactrl_serve_queue_ms         time from arrival until a replica took the request up (histogram)
    adactrl_serve_violation_rate   missed / served since this ingress started
    adactrl_serve_in_flight        requests this ingress holds now
    adactrl_serve_plans_total      plans run, tagged tier, top_k and num_blocks

Ray exports them as `ray_<name>` on each node's metrics port. The ingress records them all: every
outcome passes through it. Without Ray (unit tests) only `values` and `ledger` change.
"""

from __future__ import annotations

import functools

import ray
from ray.util.metrics import Counter, Gauge, Histogram

from adactrl.serving.budget import BudgetLedger

REQUESTS_TOTAL = "adactrl_serve_requests_total"
LATENCY_MS = "adactrl_serve_latency_ms"
QUEUE_MS = "adactrl_serve_queue_ms"
VIOLATION_RATE = "adactrl_serve_violation_rate"
IN_FLIGHT = "adactrl_serve_in_flight"
PLANS_TOTAL = "adactrl_serve_plans_total"
MS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
OUTCOME_TAGS = ("route", "outcome")
PLAN_TAGS = ("tier", "top_k", "num_blocks")


@functools.cache
def _ray_metrics() -> dict[str, Counter | Gauge | Histogram]:
    """One set per process (an ingress replica is one process)."""
    return {
        REQUESTS_TOTAL: Counter(REQUESTS_TOTAL, "requests answered", tag_keys=OUTCOME_TAGS),
        LATENCY_MS: Histogram(LATENCY_MS, "end-to-end latency at the ingress, ms", MS_BOUNDARIES, OUTCOME_TAGS),
        QUEUE_MS: Histogram(QUEUE_MS, "ms from arrival until a model replica took the request", MS_BOUNDARIES,
                            OUTCOME_TAGS),  # fmt: skip
        VIOLATION_RATE: Gauge(VIOLATION_RATE, "missed budgets / served requests since the ingress started"),
        IN_FLIGHT: Gauge(IN_FLIGHT, "requests the ingress holds now"),
        PLANS_TOTAL: Counter(PLANS_TOTAL, "plans run, by knob", tag_keys=PLAN_TAGS),
    }


class ServeMetrics:
    """One ingress's metrics; `values` holds the last value of each (counters: their totals)."""

    def __init__(self) -> None:
        self.ledger = BudgetLedger()
        self.in_flight = 0
        self.values: dict[str, float] = {}

    def enter(self) -> None:
        self.in_flight += 1
        self._set_gauge(IN_FLIGHT, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1
        self._set_gauge(IN_FLIGHT, self.in_flight)

    def bad_request(self, route: str, total_ms: float) -> None:
        self._count(route, "bad_request", total_ms)

    def answered(self, route: str, total_ms: float, queue_ms: float, *, rejected: bool, met: bool,
                 knobs: dict | None) -> None:  # fmt: skip
        """One request a replica took up: refused (429) or served, its budget met or missed."""
        self.ledger.record(rejected=rejected, met=met)
        outcome = "rejected" if rejected else "met" if met else "missed"
        self._count(route, outcome, total_ms, queue_ms)
        self._set_gauge(VIOLATION_RATE, self.ledger.violation_rate)
        if knobs is not None:
            tags = {key: str(knobs[key]) for key in PLAN_TAGS}
            self.values[PLANS_TOTAL] = self.values.get(PLANS_TOTAL, 0) + 1
            if ray.is_initialized():
                _ray_metrics()[PLANS_TOTAL].inc(1, tags=tags)

    def _count(self, route: str, outcome: str, total_ms: float, queue_ms: float | None = None) -> None:
        self.values[REQUESTS_TOTAL] = self.values.get(REQUESTS_TOTAL, 0) + 1
        self.values[LATENCY_MS] = total_ms
        if queue_ms is not None:
            self.values[QUEUE_MS] = queue_ms
        if not ray.is_initialized():
            return
        metrics, tags = _ray_metrics(), {"route": route, "outcome": outcome}
        metrics[REQUESTS_TOTAL].inc(1, tags=tags)
        metrics[LATENCY_MS].observe(total_ms, tags=tags)
        if queue_ms is not None:
            metrics[QUEUE_MS].observe(queue_ms, tags=tags)

    def _set_gauge(self, name: str, value: float) -> None:
        self.values[name] = value
        if ray.is_initialized():
            _ray_metrics()[name].set(float(value))
