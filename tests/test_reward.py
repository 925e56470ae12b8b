import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from adactrl.metrics import REWARD_ACCURACY, REWARD_MISS, REWARD_TOTAL, REWARD_VIOLATION
from adactrl.reward import SEED_REWARD, RewardConfig, compute_reward, reward_tensor, score

CONFIG = dataclasses.replace(SEED_REWARD, epsilon=0.5)
"""The seeds' five-term reward (alpha 1, beta 0.1, gamma 2, delta 0.1) with a complexity term."""


def test_within_budget_correct_answer():
    # latency 50 of 100 ms -> ratio 0.5, no overshoot.
    # accuracy 1.0*1.0 = 1.0; latency -0.1*0.5 = -0.05; violation 0;
    # efficiency 0.1*(1-0.5)*1.0 = 0.05; complexity -0.5*0.4 = -0.2; total 0.8
    r = compute_reward(1.0, 50.0, 100.0, 0.4, CONFIG)
    assert (r.accuracy, r.latency, r.violation) == pytest.approx((1.0, -0.05, 0.0))
    assert (r.efficiency, r.complexity, r.total) == pytest.approx((0.05, -0.2, 0.8))


def test_over_budget():
    # latency 150 of 100 ms -> ratio 1.5, overshoot 50 ms.
    # accuracy 0.6; latency -0.1*1.5 = -0.15; violation -2.0*50/100 = -1.0;
    # efficiency 0.1*max(0, -0.5)*0.6 = 0; complexity -0.5*1.0 = -0.5; total -1.05
    r = compute_reward(0.6, 150.0, 100.0, 1.0, CONFIG)
    assert (r.latency, r.violation, r.efficiency) == pytest.approx((-0.15, -1.0, 0.0))
    assert r.total == pytest.approx(-1.05)


def test_efficiency_needs_a_right_answer():
    # fast but wrong: latency 10 of 100 ms -> ratio 0.1; efficiency 0.1*0.9*0 = 0;
    # total = 0 - 0.01 + 0 = -0.01 (complexity 0)
    r = compute_reward(0.0, 10.0, 100.0, 0.0, CONFIG)
    assert r.efficiency == 0.0
    assert r.total == pytest.approx(-0.01)


def test_components_sum_to_total_and_metric_keys():
    r = compute_reward(0.3, 120.0, 80.0, 0.7, RewardConfig())
    parts = r.accuracy + r.latency + r.violation + r.efficiency + r.complexity + r.miss
    assert r.total == pytest.approx(parts)
    metrics = r.to_metrics()
    assert set(metrics) == {
        "reward/total", "reward/accuracy", "reward/latency", "reward/violation",
        "reward/efficiency", "reward/complexity", REWARD_MISS,
    }
    assert metrics[REWARD_TOTAL] == r.total and metrics[REWARD_VIOLATION] == r.violation
    assert r.to_metrics(prefix="val/reward/")["val/reward/accuracy"] == metrics[REWARD_ACCURACY]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.5, 10.0, 0.0, 0.0), "budget_ms"),
        ((0.5, 10.0, math.inf, 0.0), "budget_ms"),
        ((0.5, -1.0, 100.0, 0.0), "latency_ms"),
        ((0.5, math.nan, 100.0, 0.0), "latency_ms"),
        ((1.5, 10.0, 100.0, 0.0), "accuracy"),
        ((math.nan, 10.0, 100.0, 0.0), "accuracy"),
        ((0.5, 10.0, 100.0, 2.0), "complexity"),
    ],
)
def test_invalid_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        compute_reward(*args, RewardConfig())


def test_default_counts_accuracy_only_when_the_budget_is_met():
    # met: 0.8 of accuracy, nothing for the 60 ms left unspent -> 0.8 at 40 ms as at 99 ms.
    assert compute_reward(0.8, 40.0, 100.0, 0.0, RewardConfig()).total == pytest.approx(0.8)
    assert compute_reward(0.8, 99.0, 100.0, 0.0, RewardConfig()).total == pytest.approx(0.8)
    # missed by 1 ms: accuracy 0.8 * 0 = 0; miss -0.3 -> total -0.3, whatever the overshoot.
    r = compute_reward(0.8, 101.0, 100.0, 0.0, RewardConfig())
    assert (r.accuracy, r.miss, r.total) == pytest.approx((0.0, -0.3, -0.3))
    assert compute_reward(0.8, 300.0, 100.0, 0.0, RewardConfig()).total == pytest.approx(-0.3)


def test_seed_reward_keeps_a_missed_answer_and_pays_for_unspent_budget():
    # missed: accuracy 1.0 * 1.0 (weight 1); latency -0.1 * 1.2 = -0.12; violation -2 * 0.2 = -0.4;
    # no miss penalty -> 0.48
    assert compute_reward(1.0, 120.0, 100.0, 0.0, SEED_REWARD).total == pytest.approx(0.48)
    # met at 40 vs 99 ms: 1 - 0.04 + 0.06 = 1.02 vs 1 - 0.099 + 0.001 = 0.902: under-spending pays
    assert compute_reward(1.0, 40.0, 100.0, 0.0, SEED_REWARD).total == pytest.approx(1.02)
    assert compute_reward(1.0, 99.0, 100.0, 0.0, SEED_REWARD).total == pytest.approx(0.902)


def test_missed_accuracy_weight_is_a_share():
    with pytest.raises(ValueError, match="missed_accuracy_weight"):
        RewardConfig(missed_accuracy_weight=1.5)
    # half the accuracy of a missed answer: 0.5 * 0.6 = 0.3; miss penalty 0.2 -> 0.1
    config = RewardConfig(miss_penalty=0.2, missed_accuracy_weight=0.5)
    assert compute_reward(0.6, 110.0, 100.0, 0.0, config).total == pytest.approx(0.1)


def test_score_reads_a_record():
    # any record with accuracy, total_ms and complexity: 0.5 accuracy met at 30 of 40 ms -> 0.5
    record = SimpleNamespace(accuracy=0.5, total_ms=30.0, complexity=0.25)
    assert score(record, 40.0, RewardConfig()).total == pytest.approx(0.5)
    # epsilon 0.4: -0.4 * 0.25 = -0.1 -> 0.4
    assert score(record, 40.0, RewardConfig(epsilon=0.4)).total == pytest.approx(0.4)


@pytest.mark.parametrize(
    "field", ["alpha", "beta", "gamma", "delta", "epsilon", "miss_penalty", "missed_accuracy_weight"]
)
def test_config_rejects_negative_or_infinite(field):
    with pytest.raises(ValueError, match=field):
        RewardConfig(**{field: -0.1})
    with pytest.raises(ValueError, match=field):
        RewardConfig(**{field: math.inf})


def test_reward_tensor_matches_scalar():
    gen = torch.Generator().manual_seed(0)
    n = 64
    accuracy = torch.rand(n, generator=gen, dtype=torch.float64)
    latency = torch.rand(n, generator=gen, dtype=torch.float64) * 300
    budget = 20 + torch.rand(n, generator=gen, dtype=torch.float64) * 200
    complexity = torch.rand(n, generator=gen, dtype=torch.float64)
    for config in (CONFIG, RewardConfig(), RewardConfig(miss_penalty=0.3, missed_accuracy_weight=0.25)):
        batch = reward_tensor(accuracy, latency, budget, complexity, config)
        for i in range(n):
            scalar = compute_reward(
                accuracy[i].item(), latency[i].item(), budget[i].item(), complexity[i].item(), config
            )
            for name in ("total", "accuracy", "latency", "violation", "efficiency", "complexity", "miss"):
                assert getattr(batch, name)[i].item() == pytest.approx(getattr(scalar, name), abs=1e-12)
    mean = batch.mean()
    assert mean.total == pytest.approx(batch.total.mean().item())


def test_reward_tensor_validates():
    with pytest.raises(ValueError, match="budget_ms"):
        reward_tensor(torch.ones(2), torch.ones(2), torch.tensor([1.0, 0.0]), torch.zeros(2),
                      RewardConfig())
