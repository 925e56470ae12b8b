"""Validation metrics, the static Pareto oracle at the validation budgets, and the final table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence

from adactrl.knobs import KnobSpace
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
from adactrl.reward import RewardConfig, compute_reward
from adactrl.training.records import EvalRecord, estimate_errors
from adactrl.training.rollout import plan_complexity

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
    knob_space: KnobSpace,
    reward_config: RewardConfig,
) -> tuple[dict[str, float], dict[float, str]]:
    """DESIGN §6's oracle: per budget, the static plan with the best validation accuracy among
    those that meet it, scored on the same runs as the controller's validation metrics.

    A plan meets a budget when its 95th-percentile latency does (the < 5% violation target); when
    none does, the fastest plan (by median) stands in. Returns the metrics over all budgets and
    the plan chosen for each budget.
    """
    summaries = summarize(records)
    by_plan: dict[str, list[SweepRecord]] = defaultdict(list)
    for record in records:
        by_plan[record.plan].append(record)
    chosen: dict[float, str] = {}
    rewards, accuracy, latency, violated = [], [], [], []
    for budget in budgets_ms:
        meeting = [s for s in summaries if s.p95_latency_ms <= budget]
        best = max(meeting, key=lambda s: (s.accuracy, -s.latency_ms)) if meeting else summaries[0]
        chosen[budget] = best.plan
        for r in by_plan[best.plan]:
            plan = knob_space.plan(r.tier, r.insertion, r.top_k, r.num_blocks, [0.0] * knob_space.num_layers)
            complexity = plan_complexity(plan, knob_space)
            rewards.append(compute_reward(r.accuracy, r.latency_ms, budget, complexity, reward_config).total)
            accuracy.append(r.accuracy)
            latency.append(r.latency_ms)
            violated.append(float(r.latency_ms > budget))
    metrics = {
        VAL_REWARD: statistics.fmean(rewards),
        VAL_ACCURACY: statistics.fmean(accuracy),
        VAL_LATENCY_MS: statistics.fmean(latency),
        VAL_VIOLATION_RATE: statistics.fmean(violated),
    }
    return metrics, chosen


def format_summary(rows: dict[str, dict[str, float]], budgets_ms: Sequence[float]) -> str:
    """A plain-text table: one row per policy, the validation metrics as columns; where a row has
    the latency estimator's error (--latency_mode estimated), its signed and absolute means too."""
    estimated = any(VAL_ESTIMATE_ERROR_MS in m for m in rows.values())
    header = f"{'policy':<34}{'reward':>9}{'accuracy':>10}{'latency ms':>12}{'violations':>12}"
    header += f"{'est. error ms':>15}{'est. |error| ms':>17}" if estimated else ""
    lines = [f"validation at budgets {', '.join(f'{b:.1f}' for b in budgets_ms)} ms", header, "-" * len(header)]
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
