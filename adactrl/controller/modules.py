"""The controller's networks: the budget encoder, the language feature, stage 1 and stage 2.

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


class BudgetEncoder(nn.Module):
    """Budget in ms -> fixed sinusoidal features [B, feature_dim] -> MLP -> budget token [B, d_model].

    The budget token is appended to the LLM input in prefill; `features` is stage 1's budget input.
    """

    def __init__(self, d_model: int, hidden: int, feature_dim: int = 256) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        # Derived from feature_dim alone, so it is rebuilt rather than stored in checkpoints.
        self.register_buffer("periods", geometric_periods(feature_dim).float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def features(self, budget_ms: torch.Tensor) -> torch.Tensor:
        """[B] ms -> [B, feature_dim]; ValueError for a budget that is not finite and > 0."""
        budget_ms = torch.as_tensor(budget_ms, device=self.periods.device)
        return sinusoidal_budget_features(budget_ms, self.periods)

    def forward(self, budget_ms: torch.Tensor) -> torch.Tensor:
        """[B] ms -> budget token [B, d_model]."""
        return self.mlp(self.features(budget_ms))


def language_feature(token_embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of the prompt's frozen word embeddings: [T, d] -> [d] (float32)."""
    if token_embeddings.dim() != 2 or token_embeddings.shape[0] == 0:
        raise ValueError(
            f"token_embeddings must be [T, d] with T >= 1, got shape {tuple(token_embeddings.shape)}"
        )
    return token_embeddings.float().mean(dim=0)


class Stage1(nn.Module):
    """(language feature [B, d_model], budget features [B, F], budget token [B, d_model])
    -> tier [B, n_tier], insertion [B, n_ins].

    The language feature is normalised and projected to `width` first, so the parameter count
    is dominated by d_model * width and scales with the model. The budget token lives in the
    word-embedding space (it is appended to the LLM input), so it goes through the same norm and
    projection as the language feature and adds to the projected sinusoidal features: no extra
    parameters, and a trainable budget encoder receives gradients through stage 1.
    """

    def __init__(self, d_model: int, budget_dim: int, width: int, n_tier: int, n_ins: int) -> None:
        super().__init__()
        self.lang_norm = nn.LayerNorm(d_model)
        self.lang_proj = nn.Linear(d_model, width)
        self.budget_proj = nn.Linear(budget_dim, width)
        self.trunk = nn.Sequential(nn.GELU(), nn.Linear(2 * width, 2 * width), nn.GELU())
        self.tier_head = nn.Linear(2 * width, n_tier)
        self.insertion_head = nn.Linear(2 * width, n_ins)
        _init_heads(self.tier_head, self.insertion_head)

    def forward(
        self, lang_feat: torch.Tensor, budget_feat: torch.Tensor, budget_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.lang_proj.weight.dtype
        lang = self.lang_proj(self.lang_norm(lang_feat.to(dtype)))  # [B, W]
        token = self.lang_proj(self.lang_norm(budget_token.to(dtype)))  # [B, W]
        budget = self.budget_proj(budget_feat.to(dtype)) + token  # [B, W]
        h = self.trunk(torch.cat([lang, budget], dim=-1))  # [B, 2W]
        return self.tier_head(h), self.insertion_head(h)  # [B, n_tier], [B, n_ins]


class Stage2(nn.Module):
    """(latency token [B, d_model], insertion index [B]) -> top_k [B, n_k], num_blocks [B, n_b].

    The latency token is a raw residual-stream state whose scale varies by block, so it is
    layer-normalised before the narrow projection.
    """

    def __init__(self, d_model: int, width: int, n_ins: int, n_k: int, n_b: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(d_model)
        self.token_proj = nn.Linear(d_model, width)
        self.insertion_embed = nn.Embedding(n_ins, width)
        self.trunk = nn.Sequential(nn.GELU(), nn.Linear(2 * width, 4 * width), nn.GELU())
        self.top_k_head = nn.Linear(4 * width, n_k)
        self.num_blocks_head = nn.Linear(4 * width, n_b)
        _init_heads(self.top_k_head, self.num_blocks_head)

    def forward(
        self, latency_token: torch.Tensor, insertion_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.token_proj.weight.dtype
        token = self.token_proj(self.token_norm(latency_token.to(dtype)))  # [B, W]
        ins = self.insertion_embed(insertion_idx.long())  # [B, W]
        h = self.trunk(torch.cat([token, ins], dim=-1))  # [B, 4W]
        return self.top_k_head(h), self.num_blocks_head(h)  # [B, n_k], [B, n_b]


def _init_heads(*heads: nn.Linear) -> None:
    # Small output weights start the policy near uniform (maximal exploration) while keeping
    # every weight's gradient non-zero from the first step, unlike a zero init.
    for head in heads:
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
