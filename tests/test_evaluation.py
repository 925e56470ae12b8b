import csv
import dataclasses
import json

import pytest
import torch

import adactrl.evaluation as evaluation
from adactrl.baselines.oracle import LookupTableOracle, family_oracles
from adactrl.baselines.supervised import SupervisedConfig, train_supervised
from adactrl.cli import main
from adactrl.commands.evaluate import measurement_threads
from adactrl.controller import Controller, ControllerConfig, save_controller
from adactrl.evaluation import (
    aggregate,
    controller_method,
    family_oracle_method,
    log_spaced_budgets,
    oracle_method,
    paired_difference,
    random_method,
    static_methods,
    supervised_method,
)
from adactrl.profiling import write_profile
from adactrl.knobs import Knobs
from adactrl.training.records import BudgetRange, EvalRecord
from tests.baselines.helpers import record

# Three plans of the tiny model's KnobSpace (tiers low/medium/high, top_k 2..4, blocks 6..8).
TINY_PLANS = (("low", 2, 6), ("medium", 3, 7), ("high", 4, 8))


def tiny_profile_rows() -> list:
    return [
        record(plan, qid, acc, ms)
        for plan, acc, ms in zip(TINY_PLANS, (0.2, 0.5, 0.9), (5.0, 10.0, 20.0))
        for qid in (900_001, 900_002)
    ]


def rec(method: str, budget: float, acc: float, ms: float, ctrl: float = 0.0, plan: str = "p") -> EvalRecord:
    """A static method's record of the plan labelled `plan` (the label stands in the tier's place)."""
    return EvalRecord(0, budget, Knobs(plan, 1, 2, 6), acc, {"total": ms, "controller": ctrl}, method=method, kind="static")


def test_aggregate_by_hand():
    rows = aggregate(
        [rec("m", 10.0, 1.0, 8.0, 1.0, "a"), rec("m", 10.0, 0.5, 12.0, 1.0, "b"), rec("m", 10.0, 0.0, 10.0, 2.0, "a")],
        budget_range=(20.0, 40.0),
    )
    (row,) = rows
    # latencies 8, 12, 10: mean 10, median 10, p95 = sorted[int(2.85)] = 12; 12 > 10 misses once
    assert (row.mean_latency_ms, row.median_latency_ms, row.p95_latency_ms) == (10.0, 10.0, 12.0)
    assert row.violation_rate == pytest.approx(1 / 3)
    assert row.accuracy == pytest.approx(0.5)
    assert row.accuracy_within_budget == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    assert row.controller_overhead == pytest.approx(4 / 30)
    assert (row.num_distinct_plans, row.most_common_plan, row.in_range) == (2, "a/ins1/k2/b6", False)


def test_log_spaced_budgets():
    assert log_spaced_budgets(10.0, 1000.0, 3) == pytest.approx([10.0, 100.0, 1000.0])
    with pytest.raises(ValueError, match="low <= high"):
        log_spaced_budgets(10.0, 5.0, 3)


def test_evaluate_every_method_and_static_runs_are_reused(tiny_model, synthetic_rows, monkeypatch):
    space = tiny_model.knob_space
    oracle = LookupTableOracle.from_summaries(_summaries())
    supervised, _ = train_supervised(oracle, space, SupervisedConfig(hidden=8, steps=5, num_train_budgets=16))
    plans = [space.plan(t, 1, k, n, tiny_model.importance) for t, k, n in TINY_PLANS[:2]]
    methods = [
        controller_method(Controller(ControllerConfig(d_model=tiny_model.hidden_size), space)),
        oracle_method(oracle, tiny_model),
        supervised_method(supervised, tiny_model),
        random_method(space, tiny_model.importance, seed=0),
        *static_methods(plans),
    ]
    calls = []
    real_execute = evaluation.execute

    def counting_execute(model, image, question, policy, **kwargs):
        calls.append((question, policy.plan.name))
        return real_execute(model, image, question, policy, **kwargs)

    monkeypatch.setattr(evaluation, "execute", counting_execute)
    rows = evaluation.evaluate(tiny_model, methods, synthetic_rows[:2], [7.0, 1e6], budget_range=(6.0, 25.0), warmup=0)
    assert len(rows) == 6 * 2
    assert {r.method for r in rows} >= {"controller", "oracle", "supervised", "random", f"static:{plans[0].name}"}
    assert [r.in_range for r in rows if r.method == "oracle"] == [True, False]
    assert all(r.violation_rate == 0.0 for r in rows if r.budget_ms == 1e6)
    # A static plan runs once per sample, whatever the budgets and the methods that pick it (the
    # controller's runs go through adaptive_infer and are never shared).
    assert len(calls) == len(set(calls))
    assert [plan for _, plan in calls].count(plans[0].name) == 2


def _summaries():
    from adactrl.profiling import summarize

    return summarize(tiny_profile_rows())


@pytest.fixture
def tiny_setup(tmp_path, tiny_model):
    model_dir = tmp_path / "model"
    tiny_model.save(model_dir, dtype=torch.float32)
    controller = Controller(ControllerConfig(d_model=tiny_model.hidden_size), tiny_model.knob_space)
    # the extra `adactrl train` writes into its checkpoints
    save_controller(tmp_path / "controller.pt", controller, {"budget_range": BudgetRange(6.0, 25.0, 5.5, 22.7).to_dict()})
    write_profile(tiny_profile_rows(), tmp_path / "profile" / "profile.parquet")
    return tmp_path, model_dir


def test_evaluate_command_writes_every_output(tiny_setup, capsys):
    tmp_path, model_dir = tiny_setup
    out = tmp_path / "eval"
    code = main([
        "evaluate", "--controller", str(tmp_path / "controller.pt"), "--model_path", str(model_dir),
        "--profile", str(tmp_path / "profile"), "--num_samples", "2", "--budgets", "8", "100",
        "--output_dir", str(out),
    ])  # fmt: skip
    assert code == 0
    for name in ("evaluation.json", "evaluation.csv", "requests.csv", "accuracy_vs_budget.png",
                 "violation_vs_budget.png", "pareto_with_controller.png", "supervised.pt", "latency_estimator.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "evaluation.json").read_text())
    assert report["budget_range_source"] == "checkpoint"
    assert [b["in_range"] for b in report["budgets"]] == [True, False]
    # p95 latencies of the hand-made profile: low 5, medium 10, high 20 ms
    assert [b["oracle_plan"] for b in report["budgets"]] == ["low/ins1/k2/b6", "high/ins1/k4/b8"]
    with (out / "evaluation.csv").open() as f:
        table = list(csv.DictReader(f))
    # controller, controller with the budget token flipped, oracle, supervised, random + 3 static plans;
    # no family oracle: the profile has only count questions, the test rows other families too
    assert len(table) == (5 + 3) * 2
    printed = capsys.readouterr().out
    assert "outside the calibrated range" in printed and "oracle" in printed
    assert "controller - oracle" in printed and "budget token flipped" in printed and "no family oracle" in printed
    assert [p["controller_minus_oracle"]["num_questions"] for p in report["paired"]] == [2, 2]
    assert report["measurement"]["controller_budget_token"] is False


def test_threads_default_to_the_training_runs():
    assert measurement_threads(None, {"budget_range": {"num_threads": 1}}) == (1, "checkpoint")
    assert measurement_threads(3, {"budget_range": {"num_threads": 1}}) == (3, "flag")
    assert measurement_threads(None, {}) == (None, "torch default")


def test_paired_difference_by_hand():
    # questions 0, 1, 2 at 10 ms; a: 1 met, 1 missed (12 ms), 0 met; b: 0, 1, 0 all met
    # accuracy counted when met: a = 1, 0, 0; b = 0, 1, 0 -> d = 1, -1, 0: mean 0, stdev 1, se 1/sqrt(3)
    records = [
        dataclasses.replace(rec("a", 10.0, 1.0, 8.0), sample_id=0), dataclasses.replace(rec("a", 10.0, 1.0, 12.0), sample_id=1),
        dataclasses.replace(rec("a", 10.0, 0.0, 8.0), sample_id=2), dataclasses.replace(rec("b", 10.0, 0.0, 8.0), sample_id=0),
        dataclasses.replace(rec("b", 10.0, 1.0, 8.0), sample_id=1), dataclasses.replace(rec("b", 10.0, 0.0, 8.0), sample_id=2),
    ]  # fmt: skip
    d = paired_difference(records, "a", "b", 10.0)
    assert (d.mean, d.num_questions) == (0.0, 3)
    assert d.standard_error == pytest.approx(1 / 3**0.5)
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference(records[:1] + records[3:4], "a", "b", 10.0)


def test_family_oracle_picks_each_familys_own_plan(tiny_model):
    # count questions need the dear plan (0.2 -> 0.9), color questions do as well with the cheap one
    rows = [record(plan, qid, acc, ms, family=fam) for fam, accs in (("count", (0.2, 0.9)), ("color", (0.9, 0.9)))
            for plan, acc, ms in zip((TINY_PLANS[0], TINY_PLANS[2]), accs, (5.0, 20.0)) for qid in (1, 2)]  # fmt: skip
    method = family_oracle_method(family_oracles(rows), tiny_model)
    assert method.choose(30.0, {"family": "count"}).name == "high/ins1/k4/b8"
    assert method.choose(30.0, {"family": "color"}).name == "low/ins1/k2/b6"
    with pytest.raises(ValueError, match="no question of family 'digit'"):
        method.choose(30.0, {"family": "digit"})


def test_calibrated_range_reads_the_trainers_checkpoint_and_keeps_its_ends_in_range():
    from adactrl.commands.evaluate import calibrated_range, within

    extra = {"budget_range": BudgetRange(32.9, 69.6, 29.9, 63.2).to_dict()}
    assert calibrated_range(extra, oracle=None) == ((32.9, 69.6), "checkpoint")
    with pytest.raises(ValueError, match="budget_range must hold low_ms < high_ms.*--budgets"):
        calibrated_range({"budget_range": {"low_ms": 50.0, "high_ms": 10.0}}, oracle=None)
    ends = evaluation.log_spaced_budgets(27.58376225042412, 63.86745035024433, 5)
    assert all(within(b, (27.58376225042412, 63.86745035024433)) for b in ends)
    assert not within(63.9, (27.58376225042412, 63.86745035024433))


def test_checkpoint_for_another_knob_space_is_a_clear_error(tiny_setup, tiny_model, capsys):
    tmp_path, model_dir = tiny_setup
    other = dataclasses.replace(tiny_model.knob_space, top_k_values=(3, 4))
    save_controller(tmp_path / "other.pt", Controller(ControllerConfig(d_model=tiny_model.hidden_size), other))
    code = main(["evaluate", "--controller", str(tmp_path / "other.pt"), "--model_path", str(model_dir),
                 "--profile", str(tmp_path / "profile"), "--output_dir", str(tmp_path / "e")])  # fmt: skip
    assert code == 2
    assert "another KnobSpace: top_k_values" in capsys.readouterr().err


def test_profile_for_another_model_is_a_clear_error(tiny_setup, capsys):
    tmp_path, model_dir = tiny_setup
    write_profile([record(("low", 8, 16), 1, 1.0, 5.0)], tmp_path / "big" / "profile.parquet")
    code = main(["evaluate", "--controller", str(tmp_path / "controller.pt"), "--model_path", str(model_dir),
                 "--profile", str(tmp_path / "big"), "--output_dir", str(tmp_path / "e")])  # fmt: skip
    assert code == 2
    assert "does not fit this model" in capsys.readouterr().err
