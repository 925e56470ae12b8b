"""On a mix of datasets every validation metric is also reported per dataset (val/<dataset>/...)."""

import pytest

from adactrl.knobs import Knobs
from adactrl.metrics import VAL_ACCURACY
from adactrl.profiling import SweepRecord
from adactrl.reward import Reward, RewardConfig
from adactrl.training.records import EvalRecord
from adactrl.training.summary import dataset_metric, eval_metrics, format_summary, per_dataset, static_oracle

KNOBS = Knobs("low", 1, 4, 12)


def val(family: str, accuracy: float, total_ms: float, reward: float, budget_ms: float = 100.0) -> EvalRecord:
    return EvalRecord(sample_id=0, budget_ms=budget_ms, knobs=KNOBS, accuracy=accuracy,
                      latency_ms={"total": total_ms, "controller": 1.0},
                      reward=Reward(reward, accuracy, 0.0, 0.0, 0.0, 0.0), family=family)  # fmt: skip


def test_dataset_metric_keys():
    assert dataset_metric("val/accuracy", "okvqa") == "val/okvqa/accuracy"
    assert dataset_metric("rollout/latency_ms", "coco_caption") == "rollout/coco_caption/latency_ms"
    assert dataset_metric("val/reward/accuracy", "text_vqa") == "val/text_vqa/reward/accuracy"


def test_validation_metrics_per_dataset_of_a_mix():
    records = [val("text_vqa", 1.0, 50.0, 0.5), val("text_vqa", 0.0, 150.0, -0.5),
               val("coco_2014_vqa:yes/no", 0.6, 80.0, 0.2), val("coco_2014_vqa:other", 0.3, 120.0, 0.1),
               val("coco_caption", 0.05, 90.0, 0.0)]  # fmt: skip
    metrics = eval_metrics(records)
    # the mix: accuracy (1 + 0 + 0.6 + 0.3 + 0.05) / 5; text_vqa: (1 + 0) / 2, latency (50 + 150) / 2,
    # one of its two budgets missed; coco_2014_vqa's two families are one dataset: (0.6 + 0.3) / 2.
    assert metrics[VAL_ACCURACY] == pytest.approx(1.95 / 5)
    assert metrics["val/text_vqa/accuracy"] == 0.5 and metrics["val/text_vqa/latency_ms"] == 100.0
    assert metrics["val/text_vqa/violation_rate"] == 0.5 and metrics["val/text_vqa/reward"] == 0.0
    assert metrics["val/coco_2014_vqa/accuracy"] == pytest.approx(0.45)
    assert metrics["val/coco_2014_vqa/violation_rate"] == 0.5
    assert metrics["val/coco_caption/accuracy"] == 0.05 and metrics["val/coco_caption/controller_overhead"] == 1 / 90
    assert {k.split("/")[1] for k in metrics if k.count("/") == 2} == {"text_vqa", "coco_2014_vqa", "coco_caption"}
    # one dataset: its metrics are the mix's, no second copy
    assert eval_metrics(records[:2]) == {k: v for k, v in eval_metrics(records[:2]).items() if k.count("/") == 1}
    assert per_dataset(records[:2], lambda rs: {VAL_ACCURACY: 0.0}) == {}


def sweep(question_id: int, family: str, plan: str, accuracy: float, latency_ms: float) -> SweepRecord:
    tier, top_k = plan.split("/")
    return SweepRecord(
        question_id=question_id, family=family, plan=Knobs(tier, 1, int(top_k), 12).name, tier=tier, insertion=1,
        top_k=int(top_k), num_blocks=12, answer="a", accuracy=accuracy, num_image_tokens=1, num_prompt_tokens=1,
        num_output_tokens=1, latency_ms=latency_ms, vision_ms=0.0, projector_ms=0.0, prefill_ms=0.0,
        controller_ms=0.0, decode_ms=0.0,
    )  # fmt: skip


def test_the_oracle_and_the_summary_table_per_dataset():
    # one plan, so the oracle picks it at any budget: text_vqa 1.0 at 10 ms, coco_caption 0.2 at 30 ms
    records = [sweep(0, "text_vqa", "low/4", 1.0, 10.0), sweep(1, "coco_caption", "low/4", 0.2, 30.0)]
    metrics, _ = static_oracle(records, [20.0], RewardConfig())
    assert metrics[VAL_ACCURACY] == pytest.approx(0.6)
    assert (metrics["val/text_vqa/accuracy"], metrics["val/coco_caption/accuracy"]) == (1.0, 0.2)
    assert (metrics["val/text_vqa/violation_rate"], metrics["val/coco_caption/violation_rate"]) == (0.0, 1.0)
    table = format_summary({"static Pareto oracle": metrics}, [20.0]).splitlines()
    oracle_line = next(i for i, line in enumerate(table) if line.startswith("static Pareto oracle"))
    assert table[oracle_line + 1].split() == ["coco_caption", f"{metrics['val/coco_caption/reward']:.3f}", "0.200",
                                              "30.00", "100.0%"]  # fmt: skip
    assert table[oracle_line + 2].split()[:3] == ["text_vqa", f"{metrics['val/text_vqa/reward']:.3f}", "1.000"]
    assert len(table) == oracle_line + 3
