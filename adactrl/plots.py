"""PNG plots of sweeps and evaluations (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adactrl.profiling import PlanSummary, pareto_frontier  # noqa: E402


def plot_pareto(
    summaries: Sequence[PlanSummary],
    path: str | Path,
    *,
    title: str = "Static plans: accuracy vs latency",
    extra_points: Sequence[tuple[str, float, float]] = (),
) -> Path:
    """Every plan coloured by tier, the frontier as a line; extra_points are (label, latency, accuracy)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tiers = sorted({s.knobs.tier for s in summaries}, key=[s.knobs.tier for s in summaries].index)
    for tier in tiers:
        points = [s for s in summaries if s.knobs.tier == tier]
        ax.scatter([s.latency_ms for s in points], [s.accuracy for s in points], s=14, alpha=0.6, label=f"tier {tier}")
    frontier = pareto_frontier(summaries)
    ax.plot([s.latency_ms for s in frontier], [s.accuracy for s in frontier], "k-", lw=1.2, label="Pareto frontier")
    for label, latency, accuracy in extra_points:
        ax.scatter([latency], [accuracy], marker="*", s=90, label=label)
    return _finish(fig, ax, path, "median end-to-end latency (ms)", "accuracy", title)


_METHOD_STYLES = {
    "controller": dict(color="tab:red", marker="o", lw=2.0),
    "oracle": dict(color="black", marker="s", ls="--", lw=1.5),
    "supervised": dict(color="tab:blue", marker="^", lw=1.5),
    "random": dict(color="tab:gray", marker="x", ls=":", lw=1.5),
}


def plot_metric_vs_budget(
    rows: Sequence[dict],
    metric: str,
    path: str | Path,
    *,
    ylabel: str,
    title: str,
    hline: float | None = None,
) -> Path:
    """One line per method over the budgets (log x axis); rows are evaluation rows as dicts with
    method, kind, budget_ms and `metric`. Static plans are drawn thin and pale, one legend entry."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    static_labelled = False
    for method in methods:
        points = sorted((r["budget_ms"], r[metric]) for r in rows if r["method"] == method)
        kind = next(r["kind"] for r in rows if r["method"] == method)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if kind == "static":
            ax.plot(xs, ys, color="tab:green", alpha=0.25, lw=0.8, label=None if static_labelled else "static plans")
            static_labelled = True
        else:
            ax.plot(xs, ys, label=method, **_METHOD_STYLES.get(kind, {}))
    if hline is not None:
        ax.axhline(hline, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    return _finish(fig, ax, path, "latency budget (ms)", ylabel, title)


TRAINING_CURVE_PANELS = (
    ("val/reward", "validation reward"),
    ("val/accuracy", "validation accuracy"),
    ("val/latency_ms", "validation latency (ms)"),
    ("val/violation_rate", "budget violation rate"),
)


def plot_training_curves(rows: Sequence[dict], path: str | Path) -> Path:
    """One panel per validation metric over the epochs (rows of validation_history.csv)."""
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    epochs = [int(float(r["epoch"])) for r in rows]
    for ax, (key, label) in zip(axes.flat, TRAINING_CURVE_PANELS):
        values = [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]
        ax.plot(epochs, values, "o-", color="tab:red", lw=1.5, ms=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Validation (greedy controller) per epoch; epoch 0 is untrained")
    return _save(fig, path)


def plot_budget_curves(points: Sequence, oracle: Sequence, path: str | Path) -> Path:
    """Accuracy and mean latency against the budget: the controller, and the static oracle where
    given. Points are `adactrl.training.outputs.BudgetPoint`s."""
    fig, (acc, lat) = plt.subplots(1, 2, figsize=(10, 4))
    for label, series, style in (("controller", points, _METHOD_STYLES["controller"]),
                                 ("static oracle", oracle, _METHOD_STYLES["oracle"])):  # fmt: skip
        if not series:
            continue
        budgets = [p.budget_ms for p in series]
        acc.plot(budgets, [p.accuracy for p in series], label=label, **style)
        lat.plot(budgets, [p.latency_ms for p in series], label=label, **style)
    budgets = [p.budget_ms for p in points]
    lat.plot(budgets, budgets, color="gray", lw=0.8, ls=":", label="latency = budget")
    for ax, ylabel in ((acc, "accuracy"), (lat, "mean end-to-end latency (ms)")):
        ax.set_xlabel("latency budget (ms)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy and latency vs budget (validation)")
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finish(fig: plt.Figure, ax: plt.Axes, path: str | Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
