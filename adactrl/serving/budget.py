"""The budget is end to end: the time a request waited before it reached a model counts against it.

When the request reaches a replica, `admit` decides from what is left of its budget:

- at least the cheapest plan's calibrated latency left: the controller plans for what is left
  (the replica runs the cheapest plan instead when what is left is below the lowest budget of
  the controller's training range: it never learned a plan for such a budget, and its choice
  there is a guess that measured 10-35% violations in a load test, docs/serving.md);
- less, and the client sent `best_effort`: the cheapest plan runs (the answer comes, late);
- less, without `best_effort`: HTTP 429 with Retry-After, at once, without model time. An
  overloaded server then sheds load as refusals a client can see and retry, not as answers that
  silently miss their budgets, and a refused request frees the replica for the next one.

The ingress makes the same decision before a request joins the queue, on the wait `QueueModel`
expects: under overload a request is refused on arrival, not after waiting out its budget in a
queue of requests that will all be refused (which would leave the replicas serving none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONTROLLER = "controller"
CHEAPEST = "cheapest"
REJECTED = "rejected"


@dataclass(frozen=True)
class Admission:
    plan: str
    """CONTROLLER, CHEAPEST or REJECTED."""
    remaining_ms: float
    """Budget left when the request reached the model (budget minus the wait; may be negative)."""
    retry_after_s: int = 0
    """Seconds a refused client should wait (0 unless REJECTED)."""


def admit(budget_ms: float, waited_ms: float, cheapest_ms: float, best_effort: bool) -> Admission:
    """budget 100, waited 30, cheapest 20: 70 left >= 20 -> the controller plans for 70 ms.
    budget 100, waited 90, cheapest 20: 10 left < 20 -> refused (retry after 1 s), or the
    cheapest plan with best_effort."""
    remaining = budget_ms - waited_ms
    if remaining >= cheapest_ms:
        return Admission(CONTROLLER, remaining)
    if best_effort:
        return Admission(CHEAPEST, remaining)
    return Admission(REJECTED, remaining, retry_after_s(waited_ms))


def retry_after_s(waited_ms: float) -> int:
    """Whole seconds (HTTP's Retry-After unit), at least 1: the wait this request saw is the
    queue's length in time, so a retry after it finds the queue drained (waited 2.3 s -> 3)."""
    return max(1, math.ceil(waited_ms / 1000.0))


@dataclass
class QueueModel:
    """The ingress's view of its replicas: requests handed to them and not yet back, and moving
    averages of how long a replica holds one and of the hand-off time around the model."""

    replicas: int
    outstanding: int = 0
    service_ms: float = 0.0
    """How long a replica holds a request, from taking it up to the answer back at the ingress."""
    overhead_ms: float = 0.0
    """The part of service_ms outside the model (serialisation, the hand-off back)."""
    weight: float = 0.2
    """Of the newest observation in each moving average."""

    def expected_wait_ms(self) -> float:
        """A new request waits for the ones ahead of it beyond a free replica each: 3 outstanding on
        2 replicas holding 40 ms each -> (3 - 2 + 1) * 40 / 2 = 40 ms."""
        ahead = self.outstanding - self.replicas + 1
        return max(0, ahead) * self.service_ms / self.replicas

    def observe(self, service_ms: float, model_ms: float) -> None:
        overhead = max(0.0, service_ms - model_ms)
        if self.service_ms == 0.0:
            self.service_ms, self.overhead_ms = service_ms, overhead
            return
        self.service_ms += self.weight * (service_ms - self.service_ms)
        self.overhead_ms += self.weight * (overhead - self.overhead_ms)


@dataclass
class BudgetLedger:
    """Outcome counts of one process's requests: the violation rate is missed / served."""

    served: int = 0
    missed: int = 0
    rejected: int = 0

    def record(self, *, rejected: bool = False, met: bool = True) -> None:
        if rejected:
            self.rejected += 1
            return
        self.served += 1
        self.missed += not met

    @property
    def violation_rate(self) -> float:
        return self.missed / self.served if self.served else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"served": self.served, "missed": self.missed, "rejected": self.rejected,
                "violation_rate": self.violation_rate}  # fmt: skip
