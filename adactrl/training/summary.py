"""Validation metrics, the static Pareto oracle at the validation budgets, and the final table.

A run on several datasets reports every metric for the mix and for each dataset on its own,
under `dataset_metric` keys (val/okvqa/accuracy beside val/accuracy): the mix's mean hides a
dataset the controller serves badly, and its accuracy averages VQA scores with CIDEr-D / 10.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adactrl.baselines.oracle import LookupTableOracle
from adactrl.data import dataset_of_family
from adactrl.metrics import (
    VAL_ACCURACY,
    VAL_CONTROLLER_OVERHEAD,
    VAL_ESTIMATE_ABS_ERROR_MS,
    VAL_ESTIMATE_ERROR_MS,
    VAL_LATENCY_MS,
    VAL_REWARD,
    VAL_VIOLATION_RATE,
)
from adactrl.profiling import SweepRecord, summarize
from adactrl.reward import RewardConfig, score
from adactrl.training.records import EvalRecord, estimate_errors

SUMMARY_COLUMNS = (VAL_REWARD, VAL_ACCURACY, VAL_LATENCY_MS, VAL_VIOLATION_RATE)


def dataset_metric(key: str, dataset: str) -> str:
    """The key of one dataset's share of a metric: ('val/accuracy', 'okvqa') -> 'val/okvqa/accuracy'."""
    namespace, name = key.split("/", 1)
    return f"{namespace}/{dataset}/{name}"


def per_dataset(records: Sequence, metrics: Callable[[Sequence], dict[str, float]]) -> dict[str, float]:
    """`metrics` of each dataset's records (each has a `family`: adactrl.data.dataset_of_family) under
    `dataset_metric` keys; {} when every record comes from one dataset (the mix is that dataset)."""
    groups: dict[str, list] = defaultdict(list)
    for record in records:
        groups[dataset_of_family(record.family)].append(record)
    if len(groups) < 2:
        return {}
    return {dataset_metric(key, name): value for name, group in sorted(groups.items())
            for key, value in metrics(group).items()}  # fmt: skip


def eval_metrics(records: Sequence[EvalRecord]) -> dict[str, float]:
    """Means over every (sample, budget) inference of a validation pass (with the latency
    estimator's error when the records carry an estimate: --latency_mode estimated), for the
    whole split and, on a mix, for each dataset."""
    if not records:
        raise ValueError("validation produced no records: every validation sample was skipped")
    return _eval_means(records) | per_dataset(records, _eval_means)


def _eval_means(records: Sequence[EvalRecord]) -> dict[str, float]:
    total = [r.latency_ms["total"] for r in records]
    return {
        VAL_REWARD: statistics.fmean(r.reward.total for r in records),
        VAL_ACCURACY: statistics.fmean(r.accuracy for r in records),
        VAL_LATENCY_MS: statistics.fmean(total),
        VAL_VIOLATION_RATE: statistics.fmean(float(r.violated) for r in records),
        VAL_CONTROLLER_OVERHEAD: statistics.fmean(r.latency_ms["controller"] / t for r, t in zip(records, total) if t > 0),
    } | estimate_errors((r.latency_ms for r in records), (VAL_ESTIMATE_ERROR_MS, VAL_ESTIMATE_ABS_ERROR_MS))


def static_oracle(
    records: Sequence[SweepRecord],
    budgets_ms: Sequence[float],
    reward_config: RewardConfig,
) -> tuple[dict[str, float], dict[float, str]]:
    """DESIGN §6's oracle at the validation budgets: `LookupTableOracle` (the one oracle rule:
    the best plan whose p95 latency meets the budget, the cheapest when none does) chosen on
    these sweep records and scored on the same runs. In-sample: an upper bound for the oracle,
    against which `adactrl evaluate` scores an oracle chosen on other questions.

    Returns the metrics over all budgets (and on a mix, per dataset) and the plan chosen for each budget.
    """
    oracle = LookupTableOracle.from_summaries(summarize(records))
    by_plan: dict[str, list[SweepRecord]] = defaultdict(list)
    for record in records:
        by_plan[record.plan].append(record)
    chosen = {budget: oracle.choose(budget).plan for budget in budgets_ms}
    runs = [_Run(r, budget, r.family) for budget in budgets_ms for r in by_plan[chosen[budget]]]

    def means(runs: Sequence[_Run]) -> dict[str, float]:
        return {
            VAL_REWARD: statistics.fmean(score(r.record, r.budget_ms, reward_config).total for r in runs),
            VAL_ACCURACY: statistics.fmean(r.record.accuracy for r in runs),
            VAL_LATENCY_MS: statistics.fmean(r.record.total_ms for r in runs),
            VAL_VIOLATION_RATE: statistics.fmean(float(r.record.total_ms > r.budget_ms) for r in runs),
        }

    return means(runs) | per_dataset(runs, means), chosen


@dataclass(frozen=True)
class _Run:
    """One sweep record counted at one validation budget."""

    record: SweepRecord
    budget_ms: float
    family: str


def format_summary(rows: dict[str, dict[str, float]], budgets_ms: Sequence[float]) -> str:
    """A plain-text table: one row per policy, the validation metrics as columns; where a row has
    the latency estimator's error (--latency_mode estimated), its signed and absolute means too;
    on a mix of datasets, one indented row per dataset under each policy's."""
    estimated = any(VAL_ESTIMATE_ERROR_MS in m for m in rows.values())
    header = f"{'policy':<34}{'reward':>9}{'accuracy':>10}{'latency ms':>12}{'violations':>12}"
    header += f"{'est. error ms':>15}{'est. |error| ms':>17}" if estimated else ""
    lines = [
        f"validation at budgets {', '.join(f'{b:.1f}' for b in budgets_ms)} ms, on the validation questions; the "
        "oracle is chosen and scored on its own sweep of them (in-sample, an upper bound for it). "
        "Held-out comparison: `adactrl evaluate` on the test split.",
        header, "-" * len(header),
    ]
    for name, m in rows.items():
        lines.append(_summary_line(name, m, estimated))
        for dataset in _datasets_in(m):
            own = {key: m[dataset_metric(key, dataset)] for key in SUMMARY_COLUMNS}
            lines.append(_summary_line(f"  {dataset}", own, estimated=False))
    if estimated:
        lines.append("est. error: the latency estimator's estimated - measured latency on these runs")
    return "\n".join(lines)


def _summary_line(name: str, m: dict[str, float], estimated: bool) -> str:
    line = (f"{name:<34}{m[VAL_REWARD]:>9.3f}{m[VAL_ACCURACY]:>10.3f}{m[VAL_LATENCY_MS]:>12.2f}"
            f"{m[VAL_VIOLATION_RATE]:>11.1%} ")  # fmt: skip
    if estimated and VAL_ESTIMATE_ERROR_MS in m:
        line += f"{m[VAL_ESTIMATE_ERROR_MS]:>+15.2f}{m[VAL_ESTIMATE_ABS_ERROR_MS]:>17.2f}"
    elif estimated:
        line += f"{'-':>15}{'-':>17}"
    return line


def _datasets_in(metrics: dict[str, float]) -> list[str]:
    """The datasets that `metrics` holds a row of (a val/<dataset>/accuracy key)."""
    names = {key.split("/")[1] for key in metrics if key.count("/") == 2}
    return sorted(name for name in names if dataset_metric(VAL_ACCURACY, name) in metrics)
