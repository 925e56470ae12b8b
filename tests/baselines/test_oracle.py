import pytest

from adactrl.baselines.oracle import LookupTableOracle
from adactrl.knobs import Knobs, KnobSpace
from adactrl.profiling import PlanSummary, pareto_frontier, write_profile
from tests.baselines.helpers import record


def summary(name: str, tier: str, top_k: int, num_blocks: int, acc: float, median: float, p95: float) -> PlanSummary:
    """A plan labelled by `name` (NAMES maps its plan name back to the label)."""
    NAMES[Knobs(tier, 1, top_k, num_blocks).name] = name
    return PlanSummary(Knobs(tier, 1, top_k, num_blocks), acc, median, p95, {})


NAMES: dict[str, str] = {}


# name        median  p95   accuracy
# A low       10      12    0.30
# B low full  20      30    0.50
# C medium    25      28    0.45   dominated by B on the median, cheaper than B on the p95
# E high k4   35      50    0.70   dominated by D on the p95
# D high full 40      45    0.80
TABLE = [
    summary("A", "low", 4, 12, 0.30, 10.0, 12.0),
    summary("B", "low", 8, 16, 0.50, 20.0, 30.0),
    summary("C", "medium", 6, 14, 0.45, 25.0, 28.0),
    summary("E", "high", 4, 12, 0.70, 35.0, 50.0),
    summary("D", "high", 8, 16, 0.80, 40.0, 45.0),
]


def test_pareto_frontier_of_hand_table():
    # By median latency: A(10, .30) -> B(20, .50) -> C(25, .45) is worse -> E(35, .70) -> D(40, .80).
    assert [NAMES[s.plan] for s in pareto_frontier(TABLE)] == ["A", "B", "E", "D"]


@pytest.mark.parametrize(
    ("budget", "plan"),
    [(12.0, "A"), (20.0, "A"), (28.0, "C"), (29.9, "C"), (30.0, "B"), (44.0, "B"), (45.0, "D"), (1000.0, "D")],
)
def test_choice_per_budget_p95(budget, plan):
    choice = LookupTableOracle.from_summaries(TABLE).choose(budget)  # p95 is the default
    assert (NAMES[choice.plan], choice.feasible) == (plan, True)


@pytest.mark.parametrize(
    ("budget", "plan"), [(10.0, "A"), (19.0, "A"), (20.0, "B"), (25.0, "B"), (35.0, "E"), (40.0, "D")]
)
def test_choice_per_budget_median(budget, plan):
    assert NAMES[LookupTableOracle.from_summaries(TABLE, "median").choose(budget).plan] == plan


def test_below_the_cheapest_plan_returns_it_flagged():
    choice = LookupTableOracle.from_summaries(TABLE).choose(5.0)
    assert (NAMES[choice.plan], choice.feasible, choice.latency_ms) == ("A", False, 12.0)


def test_equal_accuracy_goes_to_the_cheaper_plan():
    tied = [summary("slow", "high", 6, 14, 0.5, 30, 30), summary("fast", "low", 6, 14, 0.5, 10, 10)]
    assert NAMES[LookupTableOracle.from_summaries(tied).choose(100.0).plan] == "fast"


def test_lookup_table_and_range():
    oracle = LookupTableOracle.from_summaries(TABLE)
    assert [(b, NAMES[c.plan]) for b, c in oracle.table()] == [(12.0, "A"), (28.0, "C"), (30.0, "B"), (45.0, "D")]
    assert oracle.budget_range("median") == (10.0, 40.0)
    assert oracle.budget_range("p95") == (12.0, 50.0)


def test_from_profile_table(tmp_path):
    # Two samples per plan: the median is the mean of the two, the p95 (nearest rank) the larger.
    rows = [
        record(("low", 4, 12), 0, 0.0, 8.0), record(("low", 4, 12), 1, 1.0, 12.0),
        record(("high", 8, 16), 0, 1.0, 30.0), record(("high", 8, 16), 1, 1.0, 50.0),
    ]  # fmt: skip
    write_profile(rows, tmp_path / "profile.parquet")
    oracle = LookupTableOracle.from_profile(tmp_path)
    assert oracle.choose(49.0).plan == "low/ins1/k4/b12"  # high's p95 is 50
    assert oracle.choose(50.0).plan == "high/ins1/k8/b16"
    assert LookupTableOracle.from_profile(tmp_path / "profile.parquet", "median").choose(40.0).accuracy == 1.0
    oracle.check_knob_space(KnobSpace.from_model(16, 8))


def test_bad_tables(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        LookupTableOracle.from_summaries([])
    with pytest.raises(ValueError, match="statistic"):
        LookupTableOracle.from_summaries(TABLE, "mean")
    with pytest.raises(FileNotFoundError, match="adactrl profile"):
        LookupTableOracle.from_profile(tmp_path / "missing.parquet")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"plan": ["a"], "latency_ms": [1.0]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        LookupTableOracle.from_profile(tmp_path / "other.parquet")
    empty = pa.Table.from_pylist([record(("low", 4, 12), 0, 1.0, 8.0).to_dict()]).slice(0, 0)
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="no rows"):
        LookupTableOracle.from_profile(tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="budget_ms"):
        LookupTableOracle.from_summaries(TABLE).choose(0.0)


def test_table_for_another_knob_space_is_refused():
    small = KnobSpace.from_model(8, 4)  # top_k 2..4, blocks 6..8
    with pytest.raises(ValueError, match=r"plan low/ins1/k4/b12 has num_blocks=12.*\[6, 7, 8\]"):
        LookupTableOracle.from_summaries(TABLE).check_knob_space(small)
