"""A trained controller adapts: to the budget, and to the question where the best plans differ.

Trained in-process on the simulated model of `simulated.py` with the default reward, loss and
learning rate (192 steps of 8 groups x 4 plans: a few seconds), for two seeds.
"""

import statistics

import pytest
import torch

from tests.controller.simulated import FAMILIES, greedy_plan, knobs, train


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def trained(request):
    with torch.random.fork_rng():
        return train(steps=192, seed=request.param)


def test_mean_latency_rises_with_the_budget(trained):
    controller, sim = trained
    budgets = (22.0, 30.0, 45.0, 60.0)
    mean_ms = [statistics.fmean(sim.latency_ms(greedy_plan(controller, sim, f, b)) for f in FAMILIES) for b in budgets]
    assert all(a <= b for a, b in zip(mean_ms, mean_ms[1:])), mean_ms
    assert mean_ms[-1] > mean_ms[0] + 5.0, mean_ms


def test_plan_depends_on_the_family_where_the_family_oracles_differ(trained):
    controller, sim = trained
    # At 45 ms the high tier (40 ms median, up to 44 ms) is what answers a detail question; a simple
    # question is answered at the low tier (20-32 ms) without risking the budget.
    assert knobs(greedy_plan(controller, sim, "detail", 45.0))[0] == "high"
    assert knobs(greedy_plan(controller, sim, "simple", 45.0))[0] == "low"
    # At 22 ms only the low tier meets the budget, whatever the question.
    assert {knobs(greedy_plan(controller, sim, f, 22.0))[0] for f in FAMILIES} == {"low"}

