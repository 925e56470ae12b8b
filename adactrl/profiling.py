"""The static sweep: every plan on every sample, with measured latency and accuracy (each row's
dataset metric).

One record per (sample, plan). `summarize` folds them into one row per plan and
`pareto_frontier` keeps the plans no other plan beats on both accuracy and latency.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from adactrl.eval.scoring import AnswerScorer
from adactrl.executor import StaticPolicy, execute
from adactrl.knobs import Knobs, Plan
from adactrl.models.adapter import MoEVLM
from adactrl.reward import plan_complexity


@dataclass(frozen=True)
class SweepRecord:
    question_id: int
    family: str
    plan: str
    tier: str
    insertion: int
    top_k: int
    num_blocks: int
    answer: str
    accuracy: float
    num_image_tokens: int
    num_prompt_tokens: int
    num_output_tokens: int
    latency_ms: float
    vision_ms: float
    projector_ms: float
    prefill_ms: float
    controller_ms: float
    decode_ms: float
    complexity: float = 0.0
    """`adactrl.reward.plan_complexity` of the plan (0 in tables written before it was kept)."""

    @property
    def total_ms(self) -> float:
        return self.latency_ms

    @property
    def knobs(self) -> Knobs:
        return Knobs(self.tier, self.insertion, self.top_k, self.num_blocks)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PlanSummary:
    knobs: Knobs
    accuracy: float
    latency_ms: float
    """Median end-to-end latency over the samples."""
    p95_latency_ms: float
    """95th percentile of the end-to-end latency over the samples (nearest rank)."""
    family_accuracy: dict[str, float]

    @property
    def plan(self) -> str:
        return self.knobs.name

    def to_dict(self) -> dict:
        """A flat row (the knobs as columns) for tables and JSON."""
        return {"plan": self.plan, **self.knobs._asdict(), "accuracy": self.accuracy, "latency_ms": self.latency_ms,
                "p95_latency_ms": self.p95_latency_ms, "family_accuracy": self.family_accuracy}  # fmt: skip


def sweep(
    model: MoEVLM,
    rows: Sequence[dict],
    plans: Sequence[Plan],
    *,
    max_new_tokens: int = 4,
    device: str = "cpu",
    warmup: int = 3,
    progress: Callable[[int], None] | None = None,
    scorer: AnswerScorer | None = None,
) -> list[SweepRecord]:
    """Run every plan on every row (dicts with image, question, answers, question_id, family),
    scored by `scorer` (by default the rows' own: AnswerScorer.for_split(rows)).

    Plans are interleaved per sample so that slow drift of a shared machine spreads evenly."""
    if not rows or not plans:
        raise ValueError("the sweep needs at least one sample and one plan")
    scorer = scorer or AnswerScorer.for_split(rows)
    for row in rows[:warmup]:
        execute(model, row["image"], row["question"], StaticPolicy(plans[-1]), max_new_tokens=max_new_tokens, device=device)
    records = []
    for row in rows:
        for plan in plans:
            result = execute(
                model, row["image"], row["question"], StaticPolicy(plan), max_new_tokens=max_new_tokens, device=device
            )
            ms = result.latency_ms
            records.append(
                SweepRecord(
                    question_id=int(row["question_id"]),
                    family=str(row.get("family", "")),
                    plan=plan.name,
                    tier=plan.tier,
                    insertion=plan.insertion,
                    top_k=plan.top_k,
                    num_blocks=plan.num_blocks,
                    answer=result.answer,
                    accuracy=scorer(result.answer, row["answers"], str(row.get("family", ""))),
                    num_image_tokens=result.num_image_tokens,
                    num_prompt_tokens=result.num_prompt_tokens,
                    num_output_tokens=len(result.token_ids),
                    latency_ms=ms["total"],
                    vision_ms=ms["vision"],
                    projector_ms=ms["projector"],
                    prefill_ms=ms["prefill_pre"] + ms["prefill_post"],
                    controller_ms=ms["controller"],
                    decode_ms=ms["decode"],
                    complexity=plan_complexity(plan, model.knob_space),
                )
            )
        if progress is not None:
            progress(len(plans))
    return records


def summarize(records: Iterable[SweepRecord]) -> list[PlanSummary]:
    by_plan: dict[str, list[SweepRecord]] = defaultdict(list)
    for record in records:
        by_plan[record.plan].append(record)
    summaries = []
    for group in by_plan.values():
        families: dict[str, list[float]] = defaultdict(list)
        for r in group:
            families[r.family].append(r.accuracy)
        latencies = sorted(r.latency_ms for r in group)
        first = group[0]
        summaries.append(
            PlanSummary(
                knobs=first.knobs,
                accuracy=statistics.fmean(r.accuracy for r in group),
                latency_ms=statistics.median(latencies),
                p95_latency_ms=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                family_accuracy={f: statistics.fmean(v) for f, v in sorted(families.items())},
            )
        )
    return sorted(summaries, key=lambda s: s.latency_ms)


def pareto_frontier(points: Sequence[PlanSummary]) -> list[PlanSummary]:
    """Plans not dominated on (higher accuracy, lower latency), cheapest first."""
    frontier, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p.latency_ms, -p.accuracy)):
        if point.accuracy > best:
            frontier.append(point)
            best = point.accuracy
    return frontier


def paired_drop(
    records: Iterable[SweepRecord], base_plan: str, other_plan: str, families: Sequence[str]
) -> tuple[float, float, int]:
    """How much accuracy `other_plan` loses against `base_plan` on the questions of `families`:
    the mean per-question drop, its standard error (paired: both plans ran the same questions)
    and the number of questions. A drop within about two standard errors is noise."""
    scores: dict[str, dict[int, float]] = {base_plan: {}, other_plan: {}}
    for r in records:
        if r.plan in scores and r.family in families:
            scores[r.plan][r.question_id] = r.accuracy
    shared = sorted(scores[base_plan].keys() & scores[other_plan].keys())
    if len(shared) < 2:
        raise ValueError(
            f"{base_plan} and {other_plan} share {len(shared)} questions of {list(families)}; "
            "a paired drop needs at least 2"
        )
    drops = [scores[base_plan][q] - scores[other_plan][q] for q in shared]
    return statistics.fmean(drops), statistics.stdev(drops) / len(drops) ** 0.5, len(drops)


def write_profile(records: Sequence[SweepRecord], path: str | Path) -> Path:
    """The sweep as a Parquet table, one row per (sample, plan), columns as in SweepRecord."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([r.to_dict() for r in records]), path)
    return path


def read_profile(path: str | Path) -> list[SweepRecord]:
    """Read a table written by `write_profile` (a .parquet file, or a directory holding
    profile.parquet). Raises FileNotFoundError, or ValueError for an empty table or one that
    lacks SweepRecord columns."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / "profile.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no profile table at {path}; make one with `adactrl profile`")
    try:
        table = pq.read_table(path)
    except Exception as err:
        raise ValueError(f"{path} is not a readable Parquet profile table: {err}") from err
    names = [f.name for f in fields(SweepRecord) if f.name in table.column_names or f.default is MISSING]
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not an `adactrl profile` table: missing columns {missing}")
    if table.num_rows == 0:
        raise ValueError(f"{path} has no rows; profile at least one sample")
    return [SweepRecord(**row) for row in table.select(names).to_pylist()]
