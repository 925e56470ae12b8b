"""The shared reward of both controller stages: accuracy against measured latency and budget.

    met    = latency <= budget
    reward = alpha * accuracy * (1 if met else missed_accuracy_weight)
             - miss_penalty * (0 if met else 1)
             - beta * latency/budget - gamma * max(0, latency - budget)/budget
             + delta * efficiency - epsilon * complexity

The defaults are what users judge (DESIGN §2, §6): accuracy counted only when the budget is met,
and a fixed cost per missed budget; nothing is paid for leaving budget unspent. `SEED_REWARD` is
the seeds' five-term reward (beta, gamma, delta on; no miss penalty; a missed answer still counts).
Latency terms are fractions of the budget so one set of coefficients works for every budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

from adactrl.knobs import KnobSpace, Plan

from adactrl.metrics import (
    REWARD_ACCURACY,
    REWARD_COMPLEXITY,
    REWARD_EFFICIENCY,
    REWARD_LATENCY,
    REWARD_MISS,
    REWARD_PREFIX,
    REWARD_TOTAL,
    REWARD_VIOLATION,
)


@dataclass(frozen=True)
class RewardConfig:
    """Coefficients of the reward; all finite and non-negative (the signs are in the formula)."""

    alpha: float = 1.0
    """Accuracy weight. The accuracy is the VQA score in [0, 1]; it sets the reward's scale."""
    beta: float = 0.0
    """Latency weight, per budget's worth of latency: a pull towards cheaper plans even inside the
    budget. 0 by default: inside the budget only accuracy counts (the seeds used 0.1)."""
    gamma: float = 0.0
    """Violation weight, per budget's worth of overshoot (the seeds used 2.0). 0 by default: the
    miss penalty prices a missed budget whatever the overshoot, as the violation rate does."""
    delta: float = 0.0
    """Efficiency weight: pays for the budget fraction left unused, only for correct answers. 0 by
    default: it paid the controller to under-spend (the seeds used 0.1)."""
    epsilon: float = 0.0
    """Complexity weight: charges the plan's share of the full plan's compute. Off by default
    since the latency terms already measure cost; set it to prefer lighter plans at equal speed."""
    miss_penalty: float = 0.3
    """Cost of a missed budget. With accuracy a in [0, 1] a plan that misses with probability q
    earns a * (1 - q) - miss_penalty * q, so a riskier plan pays only when its accuracy gain exceeds
    q * (a + miss_penalty): at 0.3 and a ~ 0.85 a 0.05 gain buys at most ~4.3% misses (the target
    is < 5%). Measured on the shipped model (docs/controller-quality.md, seed 0): at 1.0 the early
    misses drove the policy to one cheap plan at 4 of 5 budgets; at 0.3 it spent the loose budgets,
    with at most 0.5% violations."""
    missed_accuracy_weight: float = 0.0
    """Share of the accuracy a missed budget still earns, in [0, 1]: 0 counts an answer only when
    its budget is met (the metric users judge); the seeds' reward counted it in full (1.0)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"RewardConfig.{field.name} must be a finite number >= 0, got {value}; "
                    f"set {field.name} to a non-negative value (defaults are documented)"
                )
        if self.missed_accuracy_weight > 1:
            raise ValueError(
                f"RewardConfig.missed_accuracy_weight is a share in [0, 1], got {self.missed_accuracy_weight}; "
                "use 0 (a missed budget earns nothing) or 1 (the seeds' reward)"
            )


SEED_REWARD = RewardConfig(beta=0.1, gamma=2.0, delta=0.1, miss_penalty=0.0, missed_accuracy_weight=1.0)
"""The seeds' five-term reward (`adactrl train --beta 0.1 --gamma 2 --delta 0.1 --miss_penalty 0
--missed_accuracy_weight 1`). For a correct answer within budget it is about 1.1 - 0.2 *
latency/budget, so it pays for unspent budget: measured on the shipped model, its controller kept
one plan for every question and budget (docs/controller-quality.md)."""


@dataclass(frozen=True)
class Reward:
    """One reward: the total and its signed, weighted components; the components sum to total."""

    total: float
    accuracy: float
    """alpha * accuracy, times missed_accuracy_weight when the budget was missed."""
    latency: float
    """-beta * latency / budget (never positive)."""
    violation: float
    """-gamma * max(0, latency - budget) / budget (never positive)."""
    efficiency: float
    """delta * max(0, 1 - latency / budget) * accuracy."""
    complexity: float
    """-epsilon * complexity (never positive)."""
    miss: float = 0.0
    """-miss_penalty when the budget was missed, else 0."""

    def to_metrics(self, prefix: str = REWARD_PREFIX) -> dict[str, float]:
        """Metric keys per component; another prefix (e.g. "val/reward/") renames the namespace."""
        values = {
            REWARD_TOTAL: self.total,
            REWARD_ACCURACY: self.accuracy,
            REWARD_LATENCY: self.latency,
            REWARD_VIOLATION: self.violation,
            REWARD_EFFICIENCY: self.efficiency,
            REWARD_COMPLEXITY: self.complexity,
            REWARD_MISS: self.miss,
        }
        return {prefix + key.removeprefix(REWARD_PREFIX): float(v) for key, v in values.items()}


@dataclass(frozen=True)
class RewardBatch:
    """Rewards of N plans, each field a tensor [N], as `Reward` has them for one plan."""

    total: Tensor  # [N]
    accuracy: Tensor  # [N]
    latency: Tensor  # [N]
    violation: Tensor  # [N]
    efficiency: Tensor  # [N]
    complexity: Tensor  # [N]
    miss: Tensor  # [N]

    def mean(self) -> Reward:
        """The batch mean of every component, as one `Reward` for logging."""
        return Reward(**{f.name: getattr(self, f.name).mean().item() for f in fields(self)})


def _check_inputs(accuracy: float, latency_ms: float, budget_ms: float, complexity: float) -> None:
    if not (math.isfinite(budget_ms) and budget_ms > 0):
        raise ValueError(f"budget_ms must be finite and > 0, got {budget_ms}")
    if not (math.isfinite(latency_ms) and latency_ms >= 0):
        raise ValueError(f"latency_ms must be finite and >= 0 (a measured time), got {latency_ms}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1] (a VQA score), got {accuracy}")
    if not 0.0 <= complexity <= 1.0:
        raise ValueError(
            f"complexity must be in [0, 1] (a share of the full plan's compute), got {complexity}"
        )


def compute_reward(
    accuracy: float, latency_ms: float, budget_ms: float, complexity: float, config: RewardConfig
) -> Reward:
    """The reward of one plan run.

    accuracy: the VQA score of the answer, in [0, 1].
    latency_ms, budget_ms: measured end-to-end latency (>= 0) and the budget (> 0).
    complexity: the plan's compute as a fraction of the full plan's (all blocks, default top-k,
        highest tier), in [0, 1]; the caller computes it from the knobs.
    The efficiency bonus max(0, 1 - latency/budget) * accuracy counts saved time only when the
    answer is right, so a fast wrong answer earns nothing from it.
    """
    _check_inputs(accuracy, latency_ms, budget_ms, complexity)
    ratio = latency_ms / budget_ms
    missed = latency_ms > budget_ms
    parts = {
        "accuracy": config.alpha * accuracy * (config.missed_accuracy_weight if missed else 1.0),
        "latency": -config.beta * ratio,
        "violation": -config.gamma * max(0.0, latency_ms - budget_ms) / budget_ms,
        "efficiency": config.delta * max(0.0, 1.0 - ratio) * accuracy,
        "complexity": -config.epsilon * complexity,
        "miss": -config.miss_penalty * float(missed),
    }
    return Reward(total=sum(parts.values()), **parts)


def reward_tensor(
    accuracy: Tensor,
    latency_ms: Tensor,
    budget_ms: Tensor,
    complexity: Tensor,
    config: RewardConfig,
) -> RewardBatch:
    """`compute_reward` over N plans at once; inputs are tensors [N] (or broadcast to [N])."""
    accuracy, latency_ms, budget_ms, complexity = torch.broadcast_tensors(
        accuracy, latency_ms, budget_ms, complexity
    )
    if not bool(torch.all(torch.isfinite(budget_ms) & (budget_ms > 0))):
        raise ValueError("budget_ms must be finite and > 0 everywhere")
    if not bool(torch.all(torch.isfinite(latency_ms) & (latency_ms >= 0))):
        raise ValueError("latency_ms must be finite and >= 0 everywhere (measured times)")
    if not bool(torch.all((accuracy >= 0) & (accuracy <= 1))):
        raise ValueError("accuracy must be in [0, 1] everywhere (VQA scores)")
    if not bool(torch.all((complexity >= 0) & (complexity <= 1))):
        raise ValueError("complexity must be in [0, 1] everywhere (fractions of the full plan)")
    ratio = latency_ms / budget_ms  # [N]
    missed = (latency_ms > budget_ms).to(accuracy.dtype)  # [N] 1.0 where the budget was missed
    acc = config.alpha * accuracy * (1 - missed * (1 - config.missed_accuracy_weight))  # [N]
    lat = -config.beta * ratio  # [N]
    vio = -config.gamma * torch.clamp(latency_ms - budget_ms, min=0) / budget_ms  # [N]
    eff = config.delta * torch.clamp(1 - ratio, min=0) * accuracy  # [N]
    cpx = -config.epsilon * complexity  # [N]
    miss = -config.miss_penalty * missed  # [N]
    return RewardBatch(
        total=acc + lat + vio + eff + cpx + miss, accuracy=acc, latency=lat, violation=vio,
        efficiency=eff, complexity=cpx, miss=miss,
    )


def plan_complexity(plan: Plan, space: KnobSpace) -> float:
    """A knob-only proxy for the plan's compute as a share of the full plan's, in (0, 1].

    Expert work per token is insertion blocks at the default top-k plus the rest at top_k; the
    vision share grows with the tier's rank.
    """
    expert_work = plan.insertion * space.default_top_k + (plan.num_blocks - plan.insertion) * plan.top_k
    vision_share = (space.tiers.index(plan.tier) + 1) / len(space.tiers)
    return expert_work / (space.num_layers * space.default_top_k) * vision_share


class Scorable(Protocol):
    """What a reward needs from any record of a run: rollout, validation, sweep or evaluation."""

    @property
    def accuracy(self) -> float: ...
    @property
    def total_ms(self) -> float: ...
    @property
    def complexity(self) -> float: ...


def score(record: Scorable, budget_ms: float, config: RewardConfig) -> Reward:
    """The reward of one recorded run at `budget_ms`: the one scorer of training, summary and Tune."""
    return compute_reward(record.accuracy, record.total_ms, budget_ms, record.complexity, config)
