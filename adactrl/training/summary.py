"""Validation metrics, the static Pareto oracle at the validation budgets, and the final table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence

from adactrl.baselines.oracle import LookupTableOracle
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


def eval_metrics(records: Sequence[EvalRecord]) -> dict[str, float]:
    """Means over every (sample, budget) inference of a validation pass (with the latency
    estimator's error when the records carry an estimate: --latency_mode estimated)."""
    if not records:
        raise ValueError("validation produced no records: every validation sample was skipped")
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

    Returns the metrics over all budgets and the plan chosen for each budget.
    """
    oracle = LookupTableOracle.from_summaries(summarize(records))
    by_plan: dict[str, list[SweepRecord]] = defaultdict(list)
    for record in records:
        by_plan[record.plan].append(record)
    chosen = {budget: oracle.choose(budget).plan for budget in budgets_ms}
    runs = [(r, budget) for budget in budgets_ms for r in by_plan[chosen[budget]]]
    metrics = {
        VAL_REWARD: statistics.fmean(score(r, budget, reward_config).total for r, budget in runs),
        VAL_ACCURACY: statistics.fmean(r.accuracy for r, _ in runs),
        VAL_LATENCY_MS: statistics.fmean(r.total_ms for r, _ in runs),
        VAL_VIOLATION_RATE: statistics.fmean(float(r.total_ms > budget) for r, budget in runs),
    }
    return metrics, chosen


def format_summary(rows: dict[str, dict[str, float]], budgets_ms: Sequence[float]) -> str:
    """A plain-text table: one row per policy, the validation metrics as columns; where a row has
    the latency estimator's error (--latency_mode estimated), its signed and absolute means too."""
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
        line = (
            f"{name:<34}{m[VAL_REWARD]:>9.3f}{m[VAL_ACCURACY]:>10.3f}{m[VAL_LATENCY_MS]:>12.2f}"
            f"{m[VAL_VIOLATION_RATE]:>11.1%} "
        )
        if estimated and VAL_ESTIMATE_ERROR_MS in m:
            line += f"{m[VAL_ESTIMATE_ERROR_MS]:>+15.2f}{m[VAL_ESTIMATE_ABS_ERROR_MS]:>17.2f}"
        elif estimated:
            line += f"{'-':>15}{'-':>17}"
        lines.append(line)
    if estimated:
        lines.append("est. error: the latency estimator's estimated - measured latency on these runs")
    return "\n".join(lines)
