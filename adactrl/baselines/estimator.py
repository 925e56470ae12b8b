"""The latency estimator of Exp 1: a small MLP from a plan and its token counts to its latency.

Inputs (FEATURES): tier index, top_k, num_blocks, image tokens, prompt tokens, output tokens.
Outputs (COMPONENTS): vision, projector, prefill and decode milliseconds. Inputs are standardised
with the training rows' mean and std; targets are log1p(ms), standardised, because the stages
span orders of magnitude (a projector in a fraction of a ms, a prefill in tens) and their noise
is roughly multiplicative. Metrics are computed back in milliseconds.

The held-out split is by plan: every row of a held-out plan is held out, so the reported R² says
how well the estimator generalises to plans it never saw, not to new samples of known plans.

Use in training, `adactrl train --latency_mode estimated --latency_estimator PATH` (PATH is the
latency_estimator.pt that `adactrl baselines` writes; direct measurement stays the default):

- The driver loads the file once with the model's KnobSpace (`EstimatedRunLatency.load` in
  adactrl/training/rollout.py wraps `EstimatedLatency.load(PATH, expected_knob_space=...)`), so an
  unreadable file or one made for another KnobSpace fails before Ray starts or any rollout runs.
  Each rollout worker (in process or a Ray actor) then loads it once for itself.
- Every plan still runs (for the answer and the token counts). A training rollout's reward latency
  is `est["total"] + result.latency_ms["controller"]`, with `est` from `EstimatedLatency.latency_ms`
  on the run's plan and token counts: the controller time stays measured. The budget calibration
  uses the same latency, so the budgets share its scale. Validation greedy runs are scored on the
  measured latency, like the static Pareto oracle they are compared with in the summary.
- Every record's `latency_ms` keeps both totals (ESTIMATED_TOTAL, MEASURED_TOTAL in
  adactrl/training/records.py) beside 'total', the one the reward used, and
  `estimate_error_metrics` (estimated - measured: mean, mean absolute) is logged next to the
  reward: per learner step (LATENCY_ESTIMATE_ERROR_MS, LATENCY_ESTIMATE_ABS_ERROR_MS), per epoch
  over its training rollouts (ROLLOUT_ESTIMATE_*) and per validation pass (VAL_ESTIMATE_*), in
  MLflow, the history CSVs, the epoch's log line and the summary. Checkpoints record the mode, and
  --resume refuses another one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adactrl.baselines.checkpoint import load_payload, save_payload
from adactrl.baselines.threads import single_thread
from adactrl.knobs import KnobSpace, Plan
from adactrl.metrics import LATENCY_ESTIMATE_ABS_ERROR_MS, LATENCY_ESTIMATE_ERROR_MS
from adactrl.profiling import SweepRecord

FORMAT = "adactrl.latency_estimator/1"
FEATURES: tuple[str, ...] = ("tier_index", "top_k", "num_blocks", "image_tokens", "prompt_tokens", "output_tokens")
COMPONENTS: tuple[str, ...] = ("vision", "projector", "prefill", "decode")


@dataclass(frozen=True)
class EstimatorConfig:
    hidden: int = 64
    """Width of the two hidden layers."""
    held_out_fraction: float = 0.2
    """Fraction of the plans (not rows) held out for the reported metrics."""
    steps: int = 1500
    """Full-batch Adam steps."""
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must lie in (0, 1), got {self.held_out_fraction}")
        if self.hidden < 1 or self.steps < 1:
            raise ValueError(f"hidden and steps must be >= 1, got {self.hidden} and {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")


def regression_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MAE, RMSE and R² of [N] predictions against [N] targets.

    R² = 1 - sum((y - y_hat)²) / sum((y - mean y)²); NaN when the targets are all equal.
    """
    predicted, target = predicted.double(), target.double()
    residual = target - predicted  # [N]
    ss_res = float((residual**2).sum())
    ss_tot = float(((target - target.mean()) ** 2).sum())
    return {
        "mae": float(residual.abs().mean()),
        "rmse": math.sqrt(ss_res / residual.numel()),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
    }


def record_features(records: Sequence[SweepRecord], knob_space: KnobSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """Profile rows -> (inputs [N, 6] in FEATURES order, targets [N, 4] ms in COMPONENTS order)."""
    tiers = {tier: i for i, tier in enumerate(knob_space.tiers)}
    unknown = sorted({r.tier for r in records} - set(tiers))
    if unknown:
        raise ValueError(f"the profile table has tiers {unknown} that the KnobSpace {list(tiers)} lacks")
    x = torch.tensor(
        [[tiers[r.tier], r.top_k, r.num_blocks, r.num_image_tokens, r.num_prompt_tokens, r.num_output_tokens]
         for r in records], dtype=torch.float32,
    )  # fmt: skip
    y = torch.tensor([[r.vision_ms, r.projector_ms, r.prefill_ms, r.decode_ms] for r in records], dtype=torch.float32)
    return x, y


class LatencyEstimator(nn.Module):
    """[N, 6] FEATURES -> [N, 4] COMPONENTS ms. Normalisation statistics are buffers, saved with it."""

    def __init__(self, config: EstimatorConfig, knob_space: KnobSpace) -> None:
        super().__init__()
        self.config = config
        self.knob_space = knob_space
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.net = nn.Sequential(
                nn.Linear(len(FEATURES), config.hidden), nn.GELU(),
                nn.Linear(config.hidden, config.hidden), nn.GELU(),
                nn.Linear(config.hidden, len(COMPONENTS)),
            )  # fmt: skip
        self.register_buffer("x_mean", torch.zeros(len(FEATURES)))
        self.register_buffer("x_std", torch.ones(len(FEATURES)))
        self.register_buffer("y_mean", torch.zeros(len(COMPONENTS)))  # of log1p(ms)
        self.register_buffer("y_std", torch.ones(len(COMPONENTS)))

    def fit_normalisation(self, x: torch.Tensor, y_ms: torch.Tensor) -> None:
        # A constant input (one prompt length in the table) gets std 1 so it stays finite.
        log_y = torch.log1p(y_ms.clamp_min(0))  # [N, 4]
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(torch.where(x.std(0, correction=0) > 1e-6, x.std(0, correction=0), 1.0))
        self.y_mean.copy_(log_y.mean(0))
        self.y_std.copy_(torch.where(log_y.std(0, correction=0) > 1e-6, log_y.std(0, correction=0), 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 6] raw features -> [N, 4] standardised log1p(ms)."""
        return self.net((x - self.x_mean) / self.x_std)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 6] raw features -> [N, 4] milliseconds (>= 0)."""
        return torch.expm1(self(x.float()) * self.y_std + self.y_mean).clamp_min(0)


def split_by_plan(records: Sequence[SweepRecord], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, held-out): a seeded `fraction` of the plans, with all their rows, held out."""
    plans = sorted({r.plan for r in records})
    if len(plans) < 2:
        raise ValueError(f"a held-out split by plan needs at least 2 plans, the table has {len(plans)}")
    order = torch.randperm(len(plans), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(len(plans) - 1, max(1, round(fraction * len(plans))))
    held = {plans[i] for i in order[:n_held]}
    train = [i for i, r in enumerate(records) if r.plan not in held]
    return train, [i for i, r in enumerate(records) if r.plan in held]


def train_estimator(
    records: Sequence[SweepRecord], knob_space: KnobSpace, config: EstimatorConfig | None = None
) -> tuple[LatencyEstimator, dict[str, dict[str, float]]]:
    """Fit on the training plans -> (estimator, metrics): metrics[component] = MAE/RMSE/R² (ms) on
    the held-out plans, for each of COMPONENTS and their sum 'total'; metrics['split'] counts.

    Each component also reports `plan_mean_r2`: the R² of predicting every held-out row by the mean
    of its own plan's held-out rows (trivially 1 with one sample per plan). It is the share of the
    variance that the plan explains; when run-to-run noise dominates (a shared CPU) it is low, and
    no estimator of plan latency does much better.
    """
    config = config or EstimatorConfig()
    if not records:
        raise ValueError("the profile table is empty; the estimator needs profiled rows")
    x, y = record_features(records, knob_space)  # [N, 6], [N, 4]
    train_idx, held_idx = split_by_plan(records, config.held_out_fraction, config.seed)
    model = LatencyEstimator(config, knob_space)
    model.fit_normalisation(x[train_idx], y[train_idx])
    target = (torch.log1p(y[train_idx].clamp_min(0)) - model.y_mean) / model.y_std  # [n_train, 4]
    optimizer = torch.optim.Adam(model.net.parameters(), lr=config.lr)
    with single_thread():
        for _ in range(config.steps):
            loss = ((model(x[train_idx]) - target) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    predicted = model.predict(x[held_idx])  # [n_held, 4]
    held = y[held_idx]  # [n_held, 4]
    plan_mean = _plan_means(held, [records[i].plan for i in held_idx])  # [n_held, 4]
    metrics: dict[str, dict[str, float]] = {}
    for i, name in enumerate(COMPONENTS):
        metrics[name] = regression_metrics(predicted[:, i], held[:, i])
        metrics[name]["plan_mean_r2"] = regression_metrics(plan_mean[:, i], held[:, i])["r2"]
    metrics["total"] = regression_metrics(predicted.sum(-1), held.sum(-1))
    metrics["total"]["plan_mean_r2"] = regression_metrics(plan_mean.sum(-1), held.sum(-1))["r2"]
    held_plans = len({records[i].plan for i in held_idx})
    metrics["split"] = {"train_rows": len(train_idx), "held_out_rows": len(held_idx), "held_out_plans": held_plans}
    return model, metrics


def _plan_means(values: torch.Tensor, plans: Sequence[str]) -> torch.Tensor:
    """[N, C] -> [N, C]: each row replaced by the mean of the rows of its plan."""
    index = {plan: i for i, plan in enumerate(dict.fromkeys(plans))}
    groups = torch.tensor([index[p] for p in plans])  # [N]
    sums = torch.zeros(len(index), values.shape[1]).index_add_(0, groups, values)  # [P, C]
    counts = torch.bincount(groups, minlength=len(index)).unsqueeze(1)  # [P, 1]
    return (sums / counts)[groups]


def save_estimator(path: str | os.PathLike, model: LatencyEstimator, metrics: dict | None = None) -> None:
    save_payload(path, FORMAT, model, {"metrics": metrics or {}})


def load_estimator(
    path: str | os.PathLike, *, expected_knob_space: KnobSpace | None = None
) -> tuple[LatencyEstimator, dict]:
    """-> (estimator, metrics saved with it). ValueError for another format or KnobSpace."""
    payload, knob_space = load_payload(path, FORMAT, "latency estimator", expected_knob_space)
    model = LatencyEstimator(EstimatorConfig(**payload["config"]), knob_space)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload.get("metrics", {})


class EstimatedLatency:
    """The `--latency_mode estimated` hook: one plan run's latency from the estimator."""

    def __init__(self, estimator: LatencyEstimator) -> None:
        self.estimator = estimator.eval()

    @classmethod
    def load(cls, path: str | os.PathLike, *, expected_knob_space: KnobSpace | None = None) -> EstimatedLatency:
        return cls(load_estimator(path, expected_knob_space=expected_knob_space)[0])

    def latency_ms(
        self, plan: Plan, num_image_tokens: int, num_prompt_tokens: int, num_output_tokens: int
    ) -> dict[str, float]:
        """Estimated ms per component (COMPONENTS) and their sum 'total' (no controller time)."""
        space = self.estimator.knob_space
        if plan.tier not in space.tiers:
            raise ValueError(f"tier {plan.tier!r} is outside the estimator's KnobSpace {list(space.tiers)}")
        x = torch.tensor(
            [[space.tiers.index(plan.tier), plan.top_k, plan.num_blocks,
              num_image_tokens, num_prompt_tokens, num_output_tokens]], dtype=torch.float32,
        )  # fmt: skip
        ms = self.estimator.predict(x)[0].tolist()
        out = dict(zip(COMPONENTS, ms))
        out["total"] = sum(ms)
        return out


def estimate_error_metrics(
    estimated_ms: Sequence[float],
    measured_ms: Sequence[float],
    keys: tuple[str, str] = (LATENCY_ESTIMATE_ERROR_MS, LATENCY_ESTIMATE_ABS_ERROR_MS),
) -> dict[str, float]:
    """Mean signed (estimated - measured) and mean absolute error in ms, under keys (signed, absolute)."""
    if len(estimated_ms) != len(measured_ms) or not estimated_ms:
        raise ValueError("pass the same non-zero number of estimated and measured latencies")
    errors = [e - m for e, m in zip(estimated_ms, measured_ms)]
    signed, absolute = keys
    return {signed: sum(errors) / len(errors), absolute: sum(abs(e) for e in errors) / len(errors)}
