"""The supervised controller of Exp 2: budget -> best static plan, learned by cross-entropy.

Labels come from the lookup-table oracle: for budgets drawn log-uniformly over the profiled
range, the oracle's plan is the target. The network reads the same fixed sinusoidal budget
features as the GRPO controller's budget encoder and has three heads (tier, top_k, num_blocks);
insertion stays at the static plans' insertion point. It sees only the budget, never the image
or the prompt, so the oracle is its ceiling: it is the baseline that shows what a learned
budget -> plan map costs against the exact table.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from adactrl.baselines.checkpoint import load_payload, save_payload
from adactrl.baselines.oracle import LookupTableOracle
from adactrl.baselines.threads import single_thread
from adactrl.controller.modules import geometric_periods, sinusoidal_budget_features
from adactrl.knobs import Knobs, KnobSpace, Plan

FORMAT = "adactrl.supervised/1"
KNOBS: tuple[str, ...] = ("tier", "top_k", "num_blocks")


@dataclass(frozen=True)
class SupervisedConfig:
    """Size and training of the supervised controller."""

    feature_dim: int = 256
    """Sinusoidal budget features (even), as the controller's budget encoder has them."""
    hidden: int = 64
    """Width of the two hidden layers."""
    num_train_budgets: int = 1024
    """Budgets drawn log-uniformly over the range to label with the oracle for training."""
    num_val_budgets: int = 256
    """Held-out budgets, drawn from another stream, for the reported accuracies."""
    range_margin: float = 1.2
    """Budgets are drawn over [cheapest / margin, most expensive * margin] so that the heads
    also learn what to do just outside the profiled range; beyond it budgets are clamped."""
    steps: int = 400
    """Full-batch Adam steps."""
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.feature_dim < 2 or self.feature_dim % 2:
            raise ValueError(f"feature_dim must be even and >= 2, got {self.feature_dim}")
        for name in ("hidden", "num_train_budgets", "num_val_budgets", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.range_margin) and self.range_margin >= 1):
            raise ValueError(f"range_margin must be >= 1, got {self.range_margin}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")


class SupervisedController(nn.Module):
    """Budget [B] ms -> logits for tier [B, n_tier], top_k [B, n_k], num_blocks [B, n_b]."""

    def __init__(self, config: SupervisedConfig, knob_space: KnobSpace, insertion: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.knob_space = knob_space
        self.insertion = knob_space.insertion_positions[0] if insertion is None else insertion
        n_tier, _, n_k, n_b = knob_space.sizes
        self.register_buffer("periods", geometric_periods(config.feature_dim).float(), persistent=False)
        # The trained budget range; budgets outside it are clamped to it, since the oracle's
        # choice is constant beyond both ends and the network does not extrapolate.
        self.register_buffer("budget_range", torch.tensor([0.0, math.inf]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.trunk = nn.Sequential(
                nn.Linear(config.feature_dim, config.hidden), nn.GELU(),
                nn.Linear(config.hidden, config.hidden), nn.GELU(),
            )  # fmt: skip
            self.heads = nn.ModuleList(nn.Linear(config.hidden, n) for n in (n_tier, n_k, n_b))

    def forward(self, budget_ms: torch.Tensor) -> list[torch.Tensor]:
        budget_ms = budget_ms.to(self.periods.device).clamp(*self.budget_range.tolist())  # [B]
        features = sinusoidal_budget_features(budget_ms, self.periods)  # [B, F]
        hidden = self.trunk(features)  # [B, H]
        return [head(hidden) for head in self.heads]  # 3 x [B, n_knob]

    @torch.no_grad()
    def choose_indices(self, budget_ms: torch.Tensor) -> torch.Tensor:
        """[B] ms -> [B, 3] argmax indices (tier, top_k, num_blocks)."""
        return torch.stack([logits.argmax(dim=-1) for logits in self(budget_ms)], dim=-1)

    def choose(self, budget_ms: float) -> Knobs:
        """One budget -> knob values."""
        tier, k, n = self.choose_indices(torch.tensor([float(budget_ms)]))[0].tolist()
        space = self.knob_space
        return Knobs(space.tiers[tier], self.insertion, space.top_k_values[k], space.num_blocks_values[n])

    def plan(self, budget_ms: float, importance: tuple[float, ...]) -> Plan:
        return self.knob_space.plan(*self.choose(budget_ms), importance)


def oracle_labels(oracle: LookupTableOracle, knob_space: KnobSpace, budgets: torch.Tensor) -> torch.Tensor:
    """[B] ms -> [B, 3] index labels (tier, top_k, num_blocks) of the oracle's plan per budget."""
    oracle.check_knob_space(knob_space)
    rows = []
    for budget in budgets.tolist():
        choice = oracle.choose(budget)
        rows.append((
            knob_space.tiers.index(choice.knobs.tier),
            knob_space.top_k_values.index(choice.knobs.top_k),
            knob_space.num_blocks_values.index(choice.knobs.num_blocks),
        ))  # fmt: skip
    return torch.tensor(rows, dtype=torch.long)


def knob_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """[B, 3] predicted and label indices -> accuracy per knob and 'all' (all three right)."""
    hits = predicted == labels  # [B, 3]
    metrics = {knob: float(hits[:, i].float().mean()) for i, knob in enumerate(KNOBS)}
    metrics["all"] = float(hits.all(dim=-1).float().mean())
    return metrics


def log_uniform_budgets(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """[n] budgets with log(budget) uniform in [log low, log high]."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low))).float()


def train_supervised(
    oracle: LookupTableOracle, knob_space: KnobSpace, config: SupervisedConfig | None = None
) -> tuple[SupervisedController, dict[str, dict[str, float]]]:
    """Fit the controller to the oracle -> (controller, {"train": acc, "val": acc}) where acc has
    the per-knob and all-three accuracies (see `knob_accuracy`) on train and held-out budgets."""
    config = config or SupervisedConfig()
    low, high = oracle.budget_range(oracle.statistic)
    low, high = low / config.range_margin, high * config.range_margin
    generator = torch.Generator().manual_seed(config.seed)
    train_budgets = log_uniform_budgets(low, high, config.num_train_budgets, generator)  # [N]
    val_budgets = log_uniform_budgets(low, high, config.num_val_budgets, generator)  # [M]
    train_labels = oracle_labels(oracle, knob_space, train_budgets)  # [N, 3]
    val_labels = oracle_labels(oracle, knob_space, val_budgets)  # [M, 3]

    model = SupervisedController(config, knob_space, insertion=oracle.cheapest.knobs.insertion)
    model.budget_range.copy_(torch.tensor([low, high]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    with single_thread():
        for _ in range(config.steps):
            logits = model(train_budgets)
            loss = sum(F.cross_entropy(logit, train_labels[:, i]) for i, logit in enumerate(logits))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    metrics = {
        "train": knob_accuracy(model.choose_indices(train_budgets), train_labels),
        "val": knob_accuracy(model.choose_indices(val_budgets), val_labels),
    }
    return model, metrics


def save_supervised(path: str | os.PathLike, model: SupervisedController, metrics: dict | None = None) -> None:
    save_payload(path, FORMAT, model, {"insertion": model.insertion, "metrics": metrics or {}})


def load_supervised(
    path: str | os.PathLike, *, expected_knob_space: KnobSpace | None = None
) -> tuple[SupervisedController, dict]:
    """-> (controller, metrics saved with it). ValueError for another format or KnobSpace."""
    payload, knob_space = load_payload(path, FORMAT, "supervised controller", expected_knob_space)
    model = SupervisedController(SupervisedConfig(**payload["config"]), knob_space, int(payload["insertion"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload.get("metrics", {})
