"""The controller's networks: the budget encoder, stage 1 and stage 2.

Plain torch modules with no knowledge of the knob values: they map features to logits. The
`Controller` (policy.py) turns logits into distributions over a `KnobSpace`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MIN_PERIOD_DECADES = 0.05
"""Shortest sinusoid period, in decades of budget: a 10% budget change turns it by 0.8 rad."""
MAX_PERIOD_DECADES = 40.0
"""Longest period: over 1 ms..10 s (4 decades) it turns by 0.6 rad, a near-linear log-budget."""


def check_budgets(budget_ms: torch.Tensor) -> None:
    """Budgets are a 1-D tensor [B] of finite, positive milliseconds; anything else is refused."""
    if budget_ms.dim() != 1:
        raise ValueError(f"budget_ms must be a 1-D tensor [B], got shape {tuple(budget_ms.shape)}")
    bad = ~(torch.isfinite(budget_ms) & (budget_ms > 0))
    if bool(bad.any()):
        values, positions = budget_ms[bad].tolist(), bad.nonzero().flatten().tolist()
        raise ValueError(f"budgets must be finite and > 0 ms; got {values} at positions {positions}")


def sinusoidal_budget_features(budget_ms: torch.Tensor, periods: torch.Tensor) -> torch.Tensor:
    """Fixed sinusoidal features of the log budget: [B] -> [B, 2K] for K periods.

        p        = log10(budget_ms)                       # 1 ms -> 0, 10 s -> 4
        angle_k  = 2 * pi * p / period_k                  # period_k in decades
        features = [sin(angle_0..K-1), cos(angle_0..K-1)]

    Working in log space spreads 1 ms..10 s evenly: 10 ms vs 20 ms differs as much as 1 s vs 2 s.
    """
    check_budgets(budget_ms)
    p = torch.log10(budget_ms.to(torch.float64))  # [B]
    angles = 2 * math.pi * p[:, None] / periods.to(torch.float64)[None, :]  # [B, K]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(torch.float32)  # [B, 2K]


def geometric_periods(feature_dim: int) -> torch.Tensor:
    """K = feature_dim / 2 periods from MAX_PERIOD_DECADES down to MIN_PERIOD_DECADES: [K]."""
    k = torch.arange(feature_dim // 2, dtype=torch.float64)
    ratio = MIN_PERIOD_DECADES / MAX_PERIOD_DECADES
    return MAX_PERIOD_DECADES * ratio ** (k / max(feature_dim // 2 - 1, 1))


DEFAULT_BUDGET_RANGE_MS = (1.0, 10_000.0)
"""The range `BudgetEncoder.position` spans before a run calibrates its own (`set_range`)."""


def budget_position(budget_ms: torch.Tensor, low_ms: torch.Tensor, high_ms: torch.Tensor) -> torch.Tensor:
    """Where each budget lies in the calibrated range, on a log scale: [B] -> [B, 1].

        position = 2 * (log b - log low) / (log high - log low) - 1     # low -> -1, high -> +1

    e.g. low 25, high 100 ms: 50 ms -> 2 * log(2) / log(4) - 1 = 0. The sinusoidal features turn
    by well under a radian across one run's range on their long periods (a CPU's 25-55 ms is a
    third of a decade), so this scalar is the policy's direct, range-sized view of the budget.
    """
    check_budgets(budget_ms)
    span = torch.log(high_ms) - torch.log(low_ms)
    return (2 * (torch.log(budget_ms.float()) - torch.log(low_ms)) / span - 1)[:, None]  # [B, 1]


class BudgetEncoder(nn.Module):
    """Budget in ms -> fixed sinusoidal features [B, feature_dim] -> MLP -> budget token [B, d_model],
    and the budget's position in the run's calibrated range [B, 1].

    `features` and `position` are the stages' budget inputs. The range is a buffer, so it travels
    with the weights and the checkpoint; `set_range` sets it once a run has calibrated.
    """

    def __init__(self, d_model: int, hidden: int, feature_dim: int = 256) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        # Derived from feature_dim alone, so it is rebuilt rather than stored in checkpoints.
        self.register_buffer("periods", geometric_periods(feature_dim).float(), persistent=False)
        self.register_buffer("range_ms", torch.tensor(DEFAULT_BUDGET_RANGE_MS))
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def set_range(self, low_ms: float, high_ms: float) -> None:
        """The calibrated budget range that `position` maps to [-1, 1]."""
        if not (math.isfinite(low_ms) and math.isfinite(high_ms) and 0 < low_ms < high_ms):
            raise ValueError(f"a budget range needs 0 < low < high ms, got ({low_ms}, {high_ms})")
        self.range_ms.copy_(torch.tensor([low_ms, high_ms]))

    def features(self, budget_ms: torch.Tensor) -> torch.Tensor:
        """[B] ms -> [B, feature_dim]; ValueError for a budget that is not finite and > 0."""
        budget_ms = torch.as_tensor(budget_ms, device=self.periods.device)
        return sinusoidal_budget_features(budget_ms, self.periods)

    def position(self, budget_ms: torch.Tensor) -> torch.Tensor:
        """[B] ms -> [B, 1], -1 at the range's low end and +1 at its high end."""
        budget_ms = torch.as_tensor(budget_ms, device=self.range_ms.device)
        return budget_position(budget_ms, self.range_ms[0], self.range_ms[1])

    def forward(self, budget_ms: torch.Tensor) -> torch.Tensor:
        """[B] ms -> budget token [B, d_model]."""
        return self.mlp(self.features(budget_ms))


class Stage1(nn.Module):
    """(language feature [B, d_model], budget features [B, F], budget token [B, d_model],
    budget position [B, 1]) -> tier [B, n_tier], insertion [B, n_ins].

    The language feature is normalised and projected to `width` first, so the parameter count
    is dominated by d_model * width and scales with the model. The budget token lives in the
    word-embedding space, so it goes through the same norm and projection as the language
    feature and adds to the projected sinusoidal features and budget position: a trainable budget
    encoder receives gradients through stage 1.
    """

    def __init__(self, d_model: int, budget_dim: int, width: int, n_tier: int, n_ins: int) -> None:
        super().__init__()
        self.lang_norm = nn.LayerNorm(d_model)
        self.lang_proj = nn.Linear(d_model, width)
        self.budget_proj = nn.Linear(budget_dim, width)
        self.position_proj = nn.Linear(1, width)
        self.trunk = nn.Sequential(nn.GELU(), nn.Linear(2 * width, 2 * width), nn.GELU())
        self.tier_head = nn.Linear(2 * width, n_tier)
        self.insertion_head = nn.Linear(2 * width, n_ins)
        _init_heads(self.tier_head, self.insertion_head)

    def forward(
        self, lang_feat: torch.Tensor, budget_feat: torch.Tensor, budget_token: torch.Tensor,
        budget_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.lang_proj.weight.dtype
        lang = self.lang_proj(self.lang_norm(lang_feat.to(dtype)))  # [B, W]
        token = self.lang_proj(self.lang_norm(budget_token.to(dtype)))  # [B, W]
        position = self.position_proj(budget_pos.to(dtype))  # [B, W]
        budget = self.budget_proj(budget_feat.to(dtype)) + token + position  # [B, W]
        h = self.trunk(torch.cat([lang, budget], dim=-1))  # [B, 2W]
        return self.tier_head(h), self.insertion_head(h)  # [B, n_tier], [B, n_ins]


class Stage2(nn.Module):
    """(latency token [B, d_model], insertion index [B], language feature [B, d_model], budget
    position [B, 1]) -> top_k [B, n_k], num_blocks [B, n_b].

    The latency token is a raw residual-stream state whose scale varies by block, so it is
    layer-normalised before the narrow projection. Stage 2 also reads the request (prompt and
    budget) directly: after a block that attends only to each position itself (the shipped
    model's block 0), the latency token at insertion 1 is the same for every request, so without
    them stage 2 could not tell a tight budget from a loose one (docs/controller-quality.md).
    """

    def __init__(self, d_model: int, width: int, n_ins: int, n_k: int, n_b: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(d_model)
        self.token_proj = nn.Linear(d_model, width)
        self.lang_norm = nn.LayerNorm(d_model)
        self.lang_proj = nn.Linear(d_model, width)
        self.position_proj = nn.Linear(1, width)
        self.insertion_embed = nn.Embedding(n_ins, width)
        self.trunk = nn.Sequential(nn.GELU(), nn.Linear(4 * width, 4 * width), nn.GELU())
        self.top_k_head = nn.Linear(4 * width, n_k)
        self.num_blocks_head = nn.Linear(4 * width, n_b)
        _init_heads(self.top_k_head, self.num_blocks_head)

    def forward(
        self, latency_token: torch.Tensor, insertion_idx: torch.Tensor, lang_feat: torch.Tensor,
        budget_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.token_proj.weight.dtype
        token = self.token_proj(self.token_norm(latency_token.to(dtype)))  # [B, W]
        ins = self.insertion_embed(insertion_idx.long())  # [B, W]
        lang = self.lang_proj(self.lang_norm(lang_feat.to(dtype)))  # [B, W]
        budget = self.position_proj(budget_pos.to(dtype))  # [B, W]
        h = self.trunk(torch.cat([token, ins, lang, budget], dim=-1))  # [B, 4W]
        return self.top_k_head(h), self.num_blocks_head(h)  # [B, n_k], [B, n_b]


def _init_heads(*heads: nn.Linear) -> None:
    # Small output weights start the policy near uniform (maximal exploration) while keeping
    # every weight's gradient non-zero from the first step, unlike a zero init.
    for head in heads:
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
