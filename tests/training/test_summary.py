import pytest

from adactrl.baselines.oracle import LookupTableOracle
from adactrl.knobs import Knobs
from adactrl.metrics import VAL_ACCURACY, VAL_LATENCY_MS, VAL_REWARD, VAL_VIOLATION_RATE
from adactrl.profiling import SweepRecord, summarize
from adactrl.reward import RewardConfig
from adactrl.training.summary import format_summary, static_oracle


def record(question_id: int, plan: str, accuracy: float, latency_ms: float) -> SweepRecord:
    tier, top_k = plan.split("/")
    return SweepRecord(
        question_id=question_id, family="f", plan=Knobs(tier, 1, int(top_k), 12).name, tier=tier, insertion=1, top_k=int(top_k), num_blocks=12,
        answer="a", accuracy=accuracy, num_image_tokens=1, num_prompt_tokens=1, num_output_tokens=1,
        latency_ms=latency_ms, vision_ms=0.0, projector_ms=0.0, prefill_ms=0.0, controller_ms=0.0, decode_ms=0.0,
    )  # fmt: skip


# cheap plan: accuracy 0, 1 at 10 and 12 ms; dear plan: 1, 1 at 20 and 30 ms (p95 30 ms).
RECORDS = [record(0, "low/4", 0.0, 10.0), record(1, "low/4", 1.0, 12.0),
           record(0, "high/8", 1.0, 20.0), record(1, "high/8", 1.0, 30.0)]  # fmt: skip


def test_static_oracle_is_the_lookup_table_rule_scored_on_its_runs():
    metrics, chosen = static_oracle(RECORDS, [15.0, 25.0, 40.0], RewardConfig())
    oracle = LookupTableOracle.from_summaries(summarize(RECORDS))
    assert chosen == {b: oracle.choose(b).plan for b in (15.0, 25.0, 40.0)}
    # 15 ms: low/4 (p95 12 <= 15); 25 ms: still low/4 (high/8's p95 is 30 > 25); 40 ms: high/8.
    assert chosen == {15.0: "low/ins1/k4/b12", 25.0: "low/ins1/k4/b12", 40.0: "high/ins1/k8/b12"}
    # runs: low/4 twice at 15 and at 25 (accuracy 0, 1, 0, 1, all met), high/8 at 40 (1, 1, met)
    # reward = accuracy when met: mean (0 + 1 + 0 + 1 + 1 + 1) / 6 = 4/6
    assert metrics[VAL_REWARD] == pytest.approx(4 / 6)
    assert metrics[VAL_ACCURACY] == pytest.approx(4 / 6)
    assert metrics[VAL_LATENCY_MS] == pytest.approx((10 + 12 + 10 + 12 + 20 + 30) / 6)
    assert metrics[VAL_VIOLATION_RATE] == 0.0


def test_summary_says_what_it_compares_on_which_questions():
    metrics, _ = static_oracle(RECORDS, [25.0], RewardConfig())
    table = format_summary({"static Pareto oracle": metrics}, [25.0])
    assert "validation questions" in table and "in-sample" in table and "adactrl evaluate" in table
