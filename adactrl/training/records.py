"""Typed records that cross the actor boundary between the driver, the workers and the learner.

Requests carry only sample indices into each worker's locally built split, never images; every
record carries the `policy_version` of the weights that produced it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from adactrl.baselines.estimator import estimate_error_metrics
from adactrl.knobs import Knobs
from adactrl.metrics import LATENCY_ESTIMATE_ABS_ERROR_MS, LATENCY_ESTIMATE_ERROR_MS
from adactrl.reward import Reward

ESTIMATED_TOTAL = "estimated_total"
"""--latency_mode estimated: the estimated latency of a run (the estimator's stages plus the measured
controller time), kept in a record's `latency_ms` beside MEASURED_TOTAL whichever one is 'total'."""
MEASURED_TOTAL = "measured_total"
COMPOSED_TOTAL = "composed_total"
"""Shared-stage rollouts (docs/shared-rollouts.md), on the plans `composition_check_every` picks: the
plan's total composed from its measured stages, kept beside CHECKED_TOTAL."""
CHECKED_TOTAL = "checked_total"
"""The same plan's total measured end to end in a run of its own (the composition check)."""


@dataclass(frozen=True)
class RolloutRequest:
    """Sample `group_size` plans for each (sample, budget) pair with the worker's current policy."""

    epoch: int
    request_id: int
    """Position of this request in its epoch; with `epoch` it names the request for re-issue."""
    sample_indices: tuple[int, ...]
    """Indices into the worker's train split; a sample appears once per budget drawn for it."""
    budgets_ms: tuple[float, ...]
    """One budget per entry of sample_indices."""
    group_size: int
    policy_version: int
    """The version the worker must hold when it runs this request."""
    seed: int
    """Seeds the plan sampling, so a re-issued or resumed request samples the same plans."""
    rollout_mode: str = "shared"
    """"shared": a sample's plans, across its budgets, run their shared stages once and each plan's
    latency is composed from measured stages (docs/shared-rollouts.md); "per_plan": each plan runs
    end to end. Both sample the same plans from the same seed."""
    composition_check_every: int = 0
    """Shared mode: every this-many-th plan also runs end to end (COMPOSED_TOTAL beside CHECKED_TOTAL); 0: none."""

    def __post_init__(self) -> None:
        if len(self.sample_indices) != len(self.budgets_ms):
            raise ValueError("a rollout request needs one budget per sample index")
        if self.rollout_mode not in ("shared", "per_plan"):
            raise ValueError(f"rollout_mode must be 'shared' or 'per_plan', got {self.rollout_mode!r}")
        if self.composition_check_every < 0:
            raise ValueError(f"composition_check_every must be >= 0, got {self.composition_check_every}")


@dataclass(frozen=True)
class RolloutRecord:
    """One sampled plan, run and scored: everything the learner needs to re-score its actions."""

    sample_id: int
    """Index of the sample in the train split (unique across the run's datasets)."""
    budget_ms: float
    actions: tuple[int, int, int, int]
    """(tier, insertion, top_k, num_blocks) indices into the KnobSpace value sets."""
    old_logp: float
    """Summed log-probability of the four sub-actions under the sampling policy."""
    language_feature: np.ndarray
    """[d_model] float32, the pooled prompt embedding stage 1 read."""
    latency_token: np.ndarray
    """[d_model] float32, the hidden state stage 2 read."""
    accuracy: float
    latency_ms: dict[str, float]
    """Measured milliseconds per stage plus 'total' (the latency the reward used); with
    --latency_mode estimated also ESTIMATED_TOTAL and MEASURED_TOTAL."""
    reward: Reward
    policy_version: int
    worker_index: int
    complexity: float = 0.0
    """The plan's share of the full plan's compute (`adactrl.reward.plan_complexity`), so that
    `adactrl.reward.score` can re-score the record under any reward coefficients."""
    family: str = ""
    """The sample's family, which names its dataset: metrics of a mix are also logged per dataset."""

    @property
    def total_ms(self) -> float:
        return self.latency_ms["total"]

    @property
    def group_key(self) -> tuple[int, float]:
        return (self.sample_id, self.budget_ms)

    @property
    def violated(self) -> bool:
        return self.latency_ms["total"] > self.budget_ms


def estimate_errors(
    latencies: Iterable[dict[str, float]],
    keys: tuple[str, str] = (LATENCY_ESTIMATE_ERROR_MS, LATENCY_ESTIMATE_ABS_ERROR_MS),
) -> dict[str, float]:
    """The latency estimator's error (estimated - measured: mean, mean absolute) over the records'
    `latency_ms` that carry both latencies, under keys (signed, absolute); {} when none does."""
    pairs = [(ms[ESTIMATED_TOTAL], ms[MEASURED_TOTAL]) for ms in latencies if ESTIMATED_TOTAL in ms]
    if not pairs:
        return {}
    estimated, measured = zip(*pairs)
    return estimate_error_metrics(estimated, measured, keys)


@dataclass(frozen=True)
class SkippedSample:
    """A sample that could not be used (corrupt image, empty answers, over-long prompt)."""

    sample_id: int
    reason: str


@dataclass(frozen=True)
class RolloutBatch:
    """A worker's answer to one RolloutRequest."""

    epoch: int
    request_id: int
    records: tuple[RolloutRecord, ...]
    skipped: tuple[SkippedSample, ...]
    policy_version: int
    worker_index: int
    rollout_s: float
    """Wall time the worker spent on the request."""

    @property
    def plans_per_s(self) -> float:
        return len(self.records) / self.rollout_s if self.rollout_s > 0 else 0.0


@dataclass(frozen=True)
class EvalRequest:
    """Run the greedy policy on each validation sample at each budget."""

    sample_indices: tuple[int, ...]
    """Indices into the worker's validation split."""
    budgets_ms: tuple[float, ...]
    policy_version: int


@dataclass(frozen=True)
class EvalRecord:
    """One answer to one sample under one budget, scored: a validation run in training (the
    controller, greedy) or one request of `adactrl evaluate` (any method)."""

    sample_id: int
    """The sample's index in the worker's split in training; its question_id in `adactrl evaluate`."""
    budget_ms: float
    knobs: Knobs
    accuracy: float
    """The answer's score under its dataset's metric, in [0, 1] (adactrl.eval.answer_score)."""
    latency_ms: dict[str, float]
    """Milliseconds per stage plus 'total', end to end (a baseline's choice time is in 'controller'
    and 'total'); with --latency_mode estimated also ESTIMATED_TOTAL and MEASURED_TOTAL."""
    complexity: float = 0.0
    """As RolloutRecord.complexity: what `adactrl.reward.score` needs to re-score the record."""
    reward: Reward | None = None
    """The training reward (validation); None in `adactrl evaluate`, which judges accuracy when met."""
    policy_version: int = -1
    method: str = "controller"
    """`adactrl evaluate`'s method name ("oracle", "static:low/ins1/k4/b12", ...)."""
    kind: str = "controller"
    """The method's kind (adactrl.evaluation.METHOD_KINDS)."""
    family: str = ""
    """The question's family: its dataset and, where the dataset has one, its question type."""

    @property
    def total_ms(self) -> float:
        return self.latency_ms["total"]

    @property
    def controller_ms(self) -> float:
        return self.latency_ms.get("controller", 0.0)

    @property
    def plan(self) -> str:
        return self.knobs.name

    @property
    def violated(self) -> bool:
        return self.total_ms > self.budget_ms

    @property
    def met(self) -> bool:
        return not self.violated

    @property
    def accuracy_met(self) -> float:
        """The accuracy users judge: the answer counts only when its budget was met."""
        return self.accuracy * self.met

    def to_row(self) -> dict[str, Any]:
        """A flat row for a CSV (requests.csv): the knobs and the stage times as columns."""
        return {
            "method": self.method, "kind": self.kind, "budget_ms": self.budget_ms, "question_id": self.sample_id,
            "family": self.family, "plan": self.plan, **self.knobs._asdict(), "accuracy": self.accuracy,
            "latency_ms": self.total_ms, "controller_ms": self.controller_ms, "complexity": self.complexity,
        }  # fmt: skip


@dataclass(frozen=True)
class EvalBatch:
    records: tuple[EvalRecord, ...]
    skipped: tuple[SkippedSample, ...]
    policy_version: int
    worker_index: int


@dataclass(frozen=True)
class CalibrationResult:
    """Measured end-to-end latencies of the cheapest and the full static plan on one worker."""

    cheapest_ms: tuple[float, ...]
    full_ms: tuple[float, ...]
    worker_index: int
    num_threads: int | None = None
    """torch threads the worker measured with: the milliseconds belong to this count."""
    device: str | None = None


@dataclass(frozen=True)
class WeightsRef:
    """A published controller state: a state dict in process, an object-store ref under Ray."""

    version: int
    state: Any


CALIBRATION_QUANTILE = 0.95
"""The budget range starts at this quantile of the cheapest plan's latency (times the margin),
not its median: a plan's latency varies from run to run (p95 / median 1.3-1.8 over the 75
profiled plans of docs/controller-quality.md), and below the cheapest plan's p95 no method can
keep violations under 5%."""


def nearest_rank(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile, as `profiling.summarize` computes p95: e.g. q 0.95 of
    [1, 2, 3, 4] is sorted[int(3.8)] = 4."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


@dataclass(frozen=True)
class BudgetRange:
    """The training budget range, calibrated from measured latencies (or given) and recorded."""

    low_ms: float
    high_ms: float
    cheapest_ms: float | None = None
    """CALIBRATION_QUANTILE of the cheapest plan's measured latencies (None when the range was given)."""
    full_ms: float | None = None
    """CALIBRATION_QUANTILE of the full plan's measured latencies (None when the range was given)."""
    num_threads: int | None = None
    """torch threads of the workers that measured the range (None when it was given):
    `adactrl evaluate` measures with the same count by default, so budgets mean the same ms."""
    device: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low_ms) and math.isfinite(self.high_ms) and 0 < self.low_ms < self.high_ms):
            raise ValueError(f"a budget range needs 0 < low < high, got [{self.low_ms}, {self.high_ms}] ms")

    @classmethod
    def calibrate(cls, results: list[CalibrationResult], margin: float) -> BudgetRange:
        """[cheapest * margin, full * margin], each plan's latency its CALIBRATION_QUANTILE over every
        worker's measurements."""
        cheapest = nearest_rank([t for r in results for t in r.cheapest_ms], CALIBRATION_QUANTILE)
        full = nearest_rank([t for r in results for t in r.full_ms], CALIBRATION_QUANTILE)
        if not full > cheapest:
            raise ValueError(
                f"the full plan ({full:.2f} ms) was not slower than the cheapest ({cheapest:.2f} ms): "
                "the knobs do not change latency here; pass --budget_range_ms LOW HIGH"
            )
        threads = {r.num_threads for r in results} - {None}
        devices = {r.device for r in results} - {None}
        return cls(cheapest * margin, full * margin, cheapest, full,
                   min(threads) if threads else None, devices.pop() if len(devices) == 1 else None)  # fmt: skip

    def sample(self, rng: np.random.Generator, n: int) -> tuple[float, ...]:
        """n budgets drawn log-uniformly from the range."""
        logs = rng.uniform(math.log(self.low_ms), math.log(self.high_ms), size=n)
        return tuple(float(v) for v in np.exp(logs))

    def quantiles(self, k: int) -> tuple[float, ...]:
        """k fixed budgets at the log-space quantiles (i + 0.5) / k: the validation budgets."""
        span = math.log(self.high_ms / self.low_ms)
        return tuple(round(self.low_ms * math.exp(span * (i + 0.5) / k), 3) for i in range(k))

    def to_dict(self) -> dict[str, float | None]:
        return {"low_ms": self.low_ms, "high_ms": self.high_ms, "cheapest_ms": self.cheapest_ms, "full_ms": self.full_ms,
                "num_threads": self.num_threads, "device": self.device}  # fmt: skip
