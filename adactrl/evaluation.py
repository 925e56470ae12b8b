"""Controller against baselines across budgets: accuracy, latency, violations, overhead (DESIGN §6).

Every method answers every (sample, budget) request at batch size 1 with measured latency:

- controller: the trained two-stage controller, greedy, through `adaptive_infer` (a second
  controller method may flip its budget token, to measure what the token alone changes);
- oracle / family_oracle / supervised / random: a static plan chosen per request (the lookup
  table, the lookup table of the question's family, the Exp 2 network, a seeded uniform draw
  over the whole KnobSpace); the time the choice takes is measured and counted as controller time;
- static: one fixed plan, whatever the budget.

Every method runs on the same model inputs, [image tokens, prompt tokens]: static plans have no
budget token, and neither has the controller unless its config (or the flipped method) says so.

A static plan's run does not depend on the budget, so each (sample, plan) pair runs once and
its measurement is reused by every budget and every method that picks that plan.

Budgets outside the calibrated range are evaluated like the others and reported with
`in_range=False`; the controller never saw such budgets in training.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from adactrl.baselines.oracle import LookupTableOracle
from adactrl.baselines.supervised import SupervisedController
from adactrl.controller import Controller
from adactrl.controller.adaptive import adaptive_infer
from adactrl.eval.scoring import AnswerScorer
from adactrl.executor import InferenceResult, StaticPolicy, execute
from adactrl.knobs import KnobSpace, Plan
from adactrl.models.adapter import MoEVLM
from adactrl.profiling import PlanSummary
from adactrl.timing import cpu_clock
from adactrl.training.records import EvalRecord

METHOD_KINDS: tuple[str, ...] = ("controller", "oracle", "family_oracle", "supervised", "random", "static")

Chooser = Callable[[float, Mapping], Plan]
"""(budget in ms, the request's row) -> a static plan; only the family oracle reads the row."""


@dataclass(frozen=True)
class Method:
    """One way of choosing plans. `choose` maps a budget in ms and the request's row to a static
    plan; the controller kind has `controller` instead and chooses inside the request."""

    name: str
    kind: str
    choose: Chooser | None = None
    controller: Controller | None = None
    budget_token: bool | None = None
    """Controller kind only: append the budget token or not; None follows the controller's config."""

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"method kind must be one of {list(METHOD_KINDS)}, got {self.kind!r}")
        if (self.controller is None) if self.kind == "controller" else (self.choose is None):
            raise ValueError(f"method {self.name!r}: a controller method has a controller, any other a choose")


def controller_method(controller: Controller, name: str = "controller", budget_token: bool | None = None) -> Method:
    return Method(name, "controller", controller=controller.eval(), budget_token=budget_token)


def oracle_method(oracle: LookupTableOracle, model: MoEVLM, name: str = "oracle") -> Method:
    oracle.check_knob_space(model.knob_space)
    return Method(name, "oracle", lambda budget, row: oracle.choose(budget).to_plan(model.knob_space, model.importance))


def family_oracle_method(oracles: Mapping[str, LookupTableOracle], model: MoEVLM, name: str = "family oracle") -> Method:
    """The prompt-aware ceiling: the lookup table of the request's question family (from the
    profile's questions of that family). A request of a family the profile lacks is refused."""
    for oracle in oracles.values():
        oracle.check_knob_space(model.knob_space)

    def choose(budget: float, row: Mapping) -> Plan:
        family = str(row.get("family", ""))
        if family not in oracles:
            raise ValueError(f"the profile has no question of family {family!r}; profile more questions")
        return oracles[family].choose(budget).to_plan(model.knob_space, model.importance)

    return Method(name, "family_oracle", choose)


def supervised_method(supervised: SupervisedController, model: MoEVLM, name: str = "supervised") -> Method:
    if supervised.knob_space != model.knob_space:
        raise ValueError("the supervised controller was made for another KnobSpace than the model's")
    return Method(name, "supervised", lambda budget, row: supervised.plan(budget, model.importance))


def random_method(knob_space: KnobSpace, importance: Sequence[float], seed: int, name: str = "random") -> Method:
    """Each knob uniform over its values, independently; the same seed gives the same draws."""
    generator = torch.Generator().manual_seed(seed)
    values = (knob_space.tiers, knob_space.insertion_positions, knob_space.top_k_values, knob_space.num_blocks_values)

    def choose(budget_ms: float, row: Mapping) -> Plan:
        picks = [v[int(torch.randint(len(v), (1,), generator=generator))] for v in values]
        return knob_space.plan(*picks, importance)

    return Method(name, "random", choose)


def static_methods(plans: Sequence[Plan]) -> list[Method]:
    return [Method(f"static:{plan.name}", "static", lambda budget, row, p=plan: p) for plan in plans]


@dataclass(frozen=True)
class EvalRow:
    """One (method, budget) cell of the comparison."""

    method: str
    kind: str
    budget_ms: float
    in_range: bool
    """Whether the budget lies in the controller's calibrated range."""
    num_requests: int
    accuracy: float
    accuracy_within_budget: float
    """Mean accuracy counting an answer that missed the budget as 0."""
    mean_latency_ms: float
    median_latency_ms: float
    p95_latency_ms: float
    violation_rate: float
    """Fraction of requests whose end-to-end latency exceeded the budget."""
    controller_overhead: float
    """Controller time over end-to-end time, summed over the requests."""
    mean_controller_ms: float
    num_distinct_plans: int
    most_common_plan: str

    def to_dict(self) -> dict:
        return asdict(self)


def run_requests(
    model: MoEVLM,
    methods: Sequence[Method],
    rows: Sequence[dict],
    budgets: Sequence[float],
    *,
    max_new_tokens: int = 4,
    device: str = "cpu",
    warmup: int = 2,
    progress: Callable[[int], None] | None = None,
    scorer: AnswerScorer | None = None,
) -> list[EvalRecord]:
    """Every method on every (row, budget); rows are dicts with image, question, answers,
    question_id (and family), scored by `scorer` (by default AnswerScorer.for_split(rows))."""
    if not rows or not budgets or not methods:
        raise ValueError("evaluation needs at least one sample, one budget and one method")
    bad = [b for b in budgets if not (math.isfinite(b) and b > 0)]
    if bad:
        raise ValueError(f"budgets must be finite and > 0 ms, got {bad}")
    full = model.knob_space.full_plan(model.importance)
    for row in rows[:warmup]:
        execute(model, row["image"], row["question"], StaticPolicy(full), max_new_tokens=max_new_tokens, device=device)
    scorer = scorer or AnswerScorer.for_split(rows)
    clock = cpu_clock()  # the executor's clock, so a baseline's choice time adds up with its run's
    records: list[EvalRecord] = []
    for row in rows:
        cache: dict[str, InferenceResult] = {}
        for budget in budgets:
            for method in methods:
                if method.controller is not None:
                    out = adaptive_infer(
                        model, method.controller, row["image"], row["question"], budget,
                        greedy=True, max_new_tokens=max_new_tokens, device=device, budget_token=method.budget_token,
                    )  # fmt: skip
                    result, choice_ms = out.result, 0.0
                else:
                    began = clock()
                    plan = method.choose(budget, row)  # type: ignore[misc]
                    choice_ms = 0.0 if method.kind == "static" else (clock() - began) * 1000.0
                    if plan.name not in cache:
                        cache[plan.name] = execute(
                            model, row["image"], row["question"], StaticPolicy(plan),
                            max_new_tokens=max_new_tokens, device=device,
                        )  # fmt: skip
                    result = cache[plan.name]
                records.append(_record(method, budget, row, result, choice_ms, scorer))
                if progress is not None:
                    progress(1)
    return records


def _record(
    method: Method, budget: float, row: dict, result: InferenceResult, choice_ms: float, scorer: AnswerScorer
) -> EvalRecord:
    """The baseline's choice time counts as controller time, in the stage and in the total."""
    family = str(row.get("family", ""))
    ms = result.latency_ms
    return EvalRecord(
        sample_id=int(row["question_id"]),
        budget_ms=float(budget),
        knobs=result.plan.knobs,
        accuracy=scorer(result.answer, row["answers"], family),
        latency_ms=ms | {"controller": ms["controller"] + choice_ms, "total": result.total_ms + choice_ms},
        method=method.name,
        kind=method.kind,
        family=family,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, as `profiling.summarize` computes p95."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def aggregate(records: Sequence[EvalRecord], budget_range: tuple[float, float] | None = None) -> list[EvalRow]:
    """Per (method, budget) rows, in the order methods and budgets first appear."""
    groups: dict[tuple[str, float], list[EvalRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.budget_ms)].append(record)
    rows = []
    for (method, budget), group in groups.items():
        latencies = [r.total_ms for r in group]
        plans = statistics.multimode(r.plan for r in group)
        rows.append(
            EvalRow(
                method=method,
                kind=group[0].kind,
                budget_ms=budget,
                in_range=budget_range is None or budget_range[0] <= budget <= budget_range[1],
                num_requests=len(group),
                accuracy=statistics.fmean(r.accuracy for r in group),
                accuracy_within_budget=statistics.fmean(r.accuracy_met for r in group),
                mean_latency_ms=statistics.fmean(latencies),
                median_latency_ms=statistics.median(latencies),
                p95_latency_ms=percentile(latencies, 0.95),
                violation_rate=statistics.fmean(not r.met for r in group),
                controller_overhead=sum(r.controller_ms for r in group) / max(sum(latencies), 1e-9),
                mean_controller_ms=statistics.fmean(r.controller_ms for r in group),
                num_distinct_plans=len({r.plan for r in group}),
                most_common_plan=sorted(plans)[0],
            )
        )
    return rows


def evaluate(
    model: MoEVLM,
    methods: Sequence[Method],
    rows: Sequence[dict],
    budgets: Sequence[float],
    *,
    budget_range: tuple[float, float] | None = None,
    **run_kwargs,
) -> list[EvalRow]:
    """`run_requests` then `aggregate`: one row per (method, budget)."""
    return aggregate(run_requests(model, methods, rows, budgets, **run_kwargs), budget_range)


@dataclass(frozen=True)
class PairedDifference:
    """Method a minus method b in accuracy counted only when the budget is met, over the
    questions both answered at one budget, with the paired standard error of the mean."""

    method_a: str
    method_b: str
    budget_ms: float
    mean: float
    standard_error: float
    num_questions: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(records: Sequence[EvalRecord], method_a: str, method_b: str, budget_ms: float) -> PairedDifference:
    """Both methods answered the same questions, so their per-question differences d_q carry the
    comparison: mean(d), and stdev(d) / sqrt(n), which removes the questions' own difficulty."""
    scores: dict[str, dict[int, float]] = {method_a: {}, method_b: {}}
    for r in records:
        if r.budget_ms == budget_ms and r.method in scores:
            scores[r.method][r.sample_id] = r.accuracy_met
    shared = sorted(scores[method_a].keys() & scores[method_b].keys())
    if len(shared) < 2:
        raise ValueError(f"{method_a} and {method_b} share {len(shared)} questions at {budget_ms} ms; a paired "
                         "difference needs at least 2")  # fmt: skip
    diffs = [scores[method_a][q] - scores[method_b][q] for q in shared]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(method_a, method_b, budget_ms, statistics.fmean(diffs), se, len(diffs))


def static_summaries(records: Sequence[EvalRecord]) -> list[PlanSummary]:
    """The static methods' evaluated runs as per-plan summaries (one budget's worth: the runs
    are the same at every budget), for the Pareto plot of the evaluation split."""
    first_budget = {}
    for record in records:
        first_budget.setdefault(record.method, record.budget_ms)
    by_plan: dict[str, list[EvalRecord]] = defaultdict(list)
    for r in records:
        if r.kind == "static" and r.budget_ms == first_budget[r.method]:
            by_plan[r.plan].append(r)
    summaries = []
    for group in by_plan.values():
        latencies = [r.total_ms for r in group]
        summaries.append(
            PlanSummary(
                knobs=group[0].knobs, accuracy=statistics.fmean(r.accuracy for r in group),
                latency_ms=statistics.median(latencies), p95_latency_ms=percentile(latencies, 0.95), family_accuracy={},
            )  # fmt: skip
        )
    return sorted(summaries, key=lambda s: s.latency_ms)


def log_spaced_budgets(low: float, high: float, n: int) -> list[float]:
    """n budgets from low to high (both included), evenly spaced in log(ms) like training's draws."""
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"the budget range must satisfy 0 < low <= high, got ({low}, {high})")
    if n < 1:
        raise ValueError(f"the number of budgets must be >= 1, got {n}")
    if n == 1:
        return [math.sqrt(low * high)]
    return [low * (high / low) ** (i / (n - 1)) for i in range(n)]
