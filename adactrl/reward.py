"""The shared reward of both controller stages: accuracy against measured latency and budget.

    reward = alpha * accuracy - beta * latency/budget - gamma * max(0, latency - budget)/budget
             + delta * efficiency - epsilon * complexity

Latency terms are fractions of the budget so one set of coefficients works for every budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from adactrl.metrics import (
    REWARD_ACCURACY,
    REWARD_COMPLEXITY,
    REWARD_EFFICIENCY,
    REWARD_LATENCY,
    REWARD_PREFIX,
    REWARD_TOTAL,
    REWARD_VIOLATION,
)


@dataclass(frozen=True)
class RewardConfig:
    """Coefficients of the reward; all finite and non-negative (the signs are in the formula)."""

    alpha: float = 1.0
    """Accuracy weight. The accuracy is the VQA score in [0, 1]; it sets the reward's scale."""
    beta: float = 0.1
    """Latency weight, per budget's worth of latency: a steady pull towards cheaper plans even
    inside the budget. Kept small so it never outweighs a correct answer."""
    gamma: float = 2.0
    """Violation weight, per budget's worth of overshoot: 2.0 makes overshooting by half the
    budget cost as much as a correct answer earns, so the policy learns to stay under."""
    delta: float = 0.1
    """Efficiency weight: rewards the budget fraction left unused, only for correct answers."""
    epsilon: float = 0.0
    """Complexity weight: charges the plan's share of the full plan's compute. Off by default
    since the latency terms already measure cost; set it to prefer lighter plans at equal speed."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"RewardConfig.{field.name} must be a finite number >= 0, got {value}; "
                    f"set {field.name} to a non-negative value (defaults are documented)"
                )


@dataclass(frozen=True)
class Reward:
    """One reward: the total and its signed, weighted components; the components sum to total."""

    total: float
    accuracy: float
    """alpha * accuracy."""
    latency: float
    """-beta * latency / budget (never positive)."""
    violation: float
    """-gamma * max(0, latency - budget) / budget (never positive)."""
    efficiency: float
    """delta * max(0, 1 - latency / budget) * accuracy."""
    complexity: float
    """-epsilon * complexity (never positive)."""

    def to_metrics(self, prefix: str = REWARD_PREFIX) -> dict[str, float]:
        """Metric keys per component; another prefix (e.g. "val/reward/") renames the namespace."""
        values = {
            REWARD_TOTAL: self.total,
            REWARD_ACCURACY: self.accuracy,
            REWARD_LATENCY: self.latency,
            REWARD_VIOLATION: self.violation,
            REWARD_EFFICIENCY: self.efficiency,
            REWARD_COMPLEXITY: self.complexity,
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
    parts = {
        "accuracy": config.alpha * accuracy,
        "latency": -config.beta * ratio,
        "violation": -config.gamma * max(0.0, latency_ms - budget_ms) / budget_ms,
        "efficiency": config.delta * max(0.0, 1.0 - ratio) * accuracy,
        "complexity": -config.epsilon * complexity,
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
    acc = config.alpha * accuracy  # [N]
    lat = -config.beta * ratio  # [N]
    vio = -config.gamma * torch.clamp(latency_ms - budget_ms, min=0) / budget_ms  # [N]
    eff = config.delta * torch.clamp(1 - ratio, min=0) * accuracy  # [N]
    cpx = -config.epsilon * complexity  # [N]
    return RewardBatch(
        total=acc + lat + vio + eff + cpx, accuracy=acc, latency=lat, violation=vio,
        efficiency=eff, complexity=cpx,
    )
