import statistics

import pytest

from adactrl.knobs import Knobs
from adactrl.profiling import PlanSummary, SweepRecord, paired_drop, pareto_frontier, summarize, sweep


def record(plan: str, family: str, accuracy: float, latency_ms: float, question_id: int = 0) -> SweepRecord:
    tier, insertion, top_k, blocks = plan.split("/")
    return SweepRecord(
        question_id=question_id,
        family=family,
        plan=plan,
        tier=tier,
        insertion=int(insertion[3:]),
        top_k=int(top_k[1:]),
        num_blocks=int(blocks[1:]),
        answer="red",
        accuracy=accuracy,
        num_image_tokens=9,
        num_prompt_tokens=7,
        num_output_tokens=2,
        latency_ms=latency_ms,
        vision_ms=1.0,
        projector_ms=0.1,
        prefill_ms=2.0,
        controller_ms=0.0,
        decode_ms=3.0,
    )


def summary(label: str, accuracy: float, latency_ms: float) -> PlanSummary:
    """A plan told apart by its label, put in the tier's place."""
    return PlanSummary(Knobs(label, 1, 4, 12), accuracy, latency_ms, latency_ms, {})


def test_summarize_folds_records_per_plan():
    records = [
        record("high/ins1/k8/b16", "color", 1.0, 30.0, 1),
        record("high/ins1/k8/b16", "digit", 0.0, 10.0, 2),
        record("high/ins1/k8/b16", "digit", 1.0, 20.0, 3),
        record("low/ins1/k4/b12", "color", 0.3, 5.0, 1),
        record("low/ins1/k4/b12", "digit", 0.0, 7.0, 2),
    ]
    low, high = summarize(records)  # cheapest first
    assert (high.plan, high.knobs) == ("high/ins1/k8/b16", Knobs("high", 1, 8, 16))
    assert high.accuracy == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    assert high.latency_ms == 20.0  # median of 10, 20, 30
    assert high.p95_latency_ms == 30.0  # sorted index int(0.95 * 3) = 2
    assert high.family_accuracy == {"color": 1.0, "digit": 0.5}
    assert low.accuracy == pytest.approx(0.15)  # (0.3 + 0) / 2
    assert low.latency_ms == 6.0  # median of 5 and 7
    assert low.p95_latency_ms == 7.0  # index int(0.95 * 2) = 1
    assert low.family_accuracy == {"color": 0.3, "digit": 0.0}


def test_pareto_frontier_keeps_the_undominated_plans():
    points = [
        summary("f", 0.9, 30.0),
        summary("b", 0.2, 12.0),  # slower and worse than a
        summary("e", 0.5, 20.0),  # as good as c, but slower
        summary("a", 0.3, 10.0),
        summary("d", 0.4, 15.0),  # as fast as c, but worse
        summary("c", 0.5, 15.0),
    ]
    # by latency: a 0.3 (best so far) -> b 0.2 no -> c 0.5 yes, d 0.4 no (same latency) -> e 0.5 no
    # (not above 0.5) -> f 0.9 yes
    assert [p.knobs.tier for p in pareto_frontier(points)] == ["a", "c", "f"]
    assert pareto_frontier([]) == []


def test_sweep_runs_every_plan_on_every_sample(tiny_model, synthetic_rows):
    space = tiny_model.knob_space
    plans = [space.plan("low", 1, 2, 6, tiny_model.importance), space.full_plan(tiny_model.importance)]
    rows = synthetic_rows[:2]
    progress = []
    records = sweep(tiny_model, rows, plans, warmup=1, progress=progress.append)
    assert len(records) == 4
    assert progress == [2, 2]
    # interleaved per sample: sample 0 on both plans, then sample 1
    assert [(r.question_id, r.plan) for r in records] == [
        (rows[i]["question_id"], p.name) for i in range(2) for p in plans
    ]
    for r in records:
        assert r.family == rows[[row["question_id"] for row in rows].index(r.question_id)]["family"]
        assert r.num_image_tokens == {"low": 9, "high": 90}[r.tier]
        assert r.num_output_tokens == 4  # the tiny model never emits EOS
        assert 0.0 <= r.accuracy <= 1.0
        assert r.controller_ms >= 0.0
        components = r.vision_ms + r.projector_ms + r.prefill_ms + r.controller_ms + r.decode_ms
        assert 0.0 < components <= r.latency_ms
    summaries = summarize(records)
    assert {s.plan for s in summaries} == {p.name for p in plans}


def test_sweep_needs_samples_and_plans(tiny_model):
    with pytest.raises(ValueError, match="at least one sample and one plan"):
        sweep(tiny_model, [], [tiny_model.knob_space.full_plan(tiny_model.importance)])


FULL, CHEAP = "high/ins1/k8/b16", "low/ins1/k4/b12"


def test_paired_drop_is_the_mean_per_question_drop_with_its_standard_error():
    records = [record(FULL, "count", 1.0, 10.0, q) for q in range(4)]
    records += [record(CHEAP, "count", a, 5.0, q) for q, a in enumerate([0.0, 1.0, 0.0, 1.0])]
    records += [record(FULL, "color", 1.0, 10.0, 9), record(CHEAP, "color", 0.0, 5.0, 9)]  # other family
    drop, se, n = paired_drop(records, FULL, CHEAP, ("count",))
    assert (drop, n) == (0.5, 4)
    assert se == pytest.approx(statistics.stdev([1.0, 0.0, 1.0, 0.0]) / 2)


def test_paired_drop_of_one_changed_answer_is_within_noise():
    """One question of many flipping gives a drop of about one standard error, not two."""
    records = [record(FULL, "count", 1.0, 10.0, q) for q in range(80)]
    records += [record(CHEAP, "count", 0.0 if q == 0 else 1.0, 5.0, q) for q in range(80)]
    drop, se, _ = paired_drop(records, FULL, CHEAP, ("count",))
    assert 0 < drop < 2 * se


def test_paired_drop_needs_shared_questions():
    records = [record(FULL, "count", 1.0, 10.0, 0), record(CHEAP, "count", 1.0, 5.0, 1)]
    with pytest.raises(ValueError, match="share 0 questions"):
        paired_drop(records, FULL, CHEAP, ("count",))
