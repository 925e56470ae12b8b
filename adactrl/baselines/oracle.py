"""The lookup-table baseline: the static Pareto oracle (DESIGN §6).

For a budget, the oracle picks the single static plan with the best profiled accuracy among
those whose profiled latency meets the budget. Which latency "meets" is a choice:

- "p95" (default): the plan's 95th-percentile latency is within the budget, so at most about 5%
  of the profiled runs overshot it. This is the statistic that keeps the violation rate under
  the 5% target of DESIGN §6 when the evaluation machine behaves like the profiling one.
- "median": the plan's median latency is within the budget: higher accuracy, but about half of
  the runs of a plan chosen right at its median overshoot.

Below the cheapest plan's latency no plan meets the budget: the oracle returns the cheapest plan
and marks the choice `feasible=False` (it is still the best a static plan can do).
Ties in accuracy go to the cheaper plan, then to the plan name, so the choice is deterministic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from adactrl.knobs import Knobs, KnobSpace, Plan
from adactrl.profiling import PlanSummary, SweepRecord, read_profile, summarize

LATENCY_STATISTICS: tuple[str, ...] = ("p95", "median")


@dataclass(frozen=True)
class OracleChoice:
    """The static plan the oracle picks for one budget."""

    knobs: Knobs
    accuracy: float
    """Profiled accuracy of the plan."""
    latency_ms: float
    """The plan's profiled latency statistic (p95 or median), the one compared with the budget."""
    feasible: bool
    """False when no plan meets the budget and the cheapest plan was returned instead."""

    @property
    def plan(self) -> str:
        return self.knobs.name

    def to_plan(self, knob_space: KnobSpace, importance: Sequence[float]) -> Plan:
        """The executable plan (blocks chosen by the model's importance scores)."""
        return knob_space.plan(*self.knobs, importance)


class LookupTableOracle:
    """Best static plan per budget, from the per-plan summaries of a profile table."""

    def __init__(self, summaries: Sequence[PlanSummary], statistic: str = "p95") -> None:
        if statistic not in LATENCY_STATISTICS:
            raise ValueError(f"statistic must be one of {list(LATENCY_STATISTICS)}, got {statistic!r}")
        if not summaries:
            raise ValueError("the oracle needs at least one profiled plan; the profile table is empty")
        names = [s.plan for s in summaries]
        if len(set(names)) != len(names):
            raise ValueError("the summaries list a plan twice; pass one summary per plan (see `summarize`)")
        bad = [s.plan for s in summaries if not (math.isfinite(self._stat(s, statistic)) and s.accuracy >= 0)]
        if bad:
            raise ValueError(f"plans {bad} have a non-finite latency or a negative accuracy")
        self.statistic = statistic
        # Cheapest first; the accuracy tie-break in `choose` relies on this order.
        self.summaries: tuple[PlanSummary, ...] = tuple(
            sorted(summaries, key=lambda s: (self._stat(s, statistic), s.plan))
        )

    @classmethod
    def from_summaries(cls, summaries: Sequence[PlanSummary], statistic: str = "p95") -> LookupTableOracle:
        return cls(summaries, statistic)

    @classmethod
    def from_profile(cls, path: str | os.PathLike, statistic: str = "p95") -> LookupTableOracle:
        """From an `adactrl profile` table: profile.parquet, or the directory holding it."""
        return cls(summarize(read_profile(path)), statistic)

    @staticmethod
    def _stat(summary: PlanSummary, statistic: str) -> float:
        return summary.p95_latency_ms if statistic == "p95" else summary.latency_ms

    def latency(self, summary: PlanSummary) -> float:
        """The plan's latency under this oracle's statistic."""
        return self._stat(summary, self.statistic)

    @property
    def cheapest(self) -> PlanSummary:
        return self.summaries[0]

    @property
    def most_expensive(self) -> PlanSummary:
        return self.summaries[-1]

    def budget_range(self, statistic: str = "median") -> tuple[float, float]:
        """(cheapest, most expensive) plan latency in ms: the range budgets are meaningful in."""
        values = [self._stat(s, statistic) for s in self.summaries]
        return min(values), max(values)

    def choose(self, budget_ms: float) -> OracleChoice:
        """The best static plan whose latency statistic is <= budget_ms (see the module docstring)."""
        if not (math.isfinite(budget_ms) and budget_ms > 0):
            raise ValueError(f"budget_ms must be finite and > 0, got {budget_ms}")
        best, feasible = self.cheapest, False
        for summary in self.summaries:  # cheapest first, so ties keep the cheaper plan
            if self.latency(summary) > budget_ms:
                break
            if not feasible or summary.accuracy > best.accuracy:
                best, feasible = summary, True
        return OracleChoice(knobs=best.knobs, accuracy=best.accuracy, latency_ms=self.latency(best), feasible=feasible)

    def table(self) -> list[tuple[float, OracleChoice]]:
        """The lookup table itself: (budget in ms from which on, the choice), cheapest first."""
        steps: list[tuple[float, OracleChoice]] = []
        for summary in self.summaries:
            choice = self.choose(self.latency(summary))
            if not steps or steps[-1][1].plan != choice.plan:
                steps.append((self.latency(summary), choice))
        return steps

    def check_knob_space(self, knob_space: KnobSpace) -> None:
        """ValueError naming the first profiled plan that the model's KnobSpace does not allow."""
        allowed = {
            "tier": knob_space.tiers,
            "insertion": knob_space.insertion_positions,
            "top_k": knob_space.top_k_values,
            "num_blocks": knob_space.num_blocks_values,
        }
        for summary in self.summaries:
            for knob, values in allowed.items():
                if getattr(summary.knobs, knob) not in values:
                    raise ValueError(
                        f"the profile table does not fit this model: plan {summary.plan} has "
                        f"{knob}={getattr(summary.knobs, knob)!r}, the model allows {list(values)}; "
                        "profile this model with `adactrl profile`"
                    )


def family_oracles(records: Sequence[SweepRecord], statistic: str = "p95") -> dict[str, LookupTableOracle]:
    """The prompt-aware oracle: one lookup table per question family, ranking the plans by their
    accuracy on that family's profiled questions. Latency is a property of the plan (the prompt
    changes it little), so each plan keeps its latency statistic over all profiled questions: a
    family's handful of questions would make its p95 the noisiest run. A controller whose stage 1
    reads the prompt can learn this table, so it is the ceiling an adaptive controller is
    measured against (the static oracle is the floor). Records without a family form no table."""
    summaries = summarize(records)
    families = sorted({r.family for r in records if r.family})
    return {
        family: LookupTableOracle.from_summaries(
            [replace(s, accuracy=s.family_accuracy[family]) for s in summaries if family in s.family_accuracy], statistic
        )
        for family in families
    }
