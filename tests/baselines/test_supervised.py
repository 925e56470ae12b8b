import dataclasses

import pytest
import torch

from adactrl.baselines.oracle import LookupTableOracle
from adactrl.baselines.supervised import (
    SupervisedConfig,
    knob_accuracy,
    load_supervised,
    oracle_labels,
    save_supervised,
    train_supervised,
)
from adactrl.knobs import Knobs, KnobSpace
from adactrl.profiling import PlanSummary

SPACE = KnobSpace.from_model(16, 8)
# Three plans, each the best from its latency on: low < 20 ms <= medium < 40 ms <= high.
TOY = LookupTableOracle.from_summaries([
    PlanSummary(Knobs("low", 1, 4, 12), 0.3, 10.0, 10.0, {}),
    PlanSummary(Knobs("medium", 1, 6, 14), 0.6, 20.0, 20.0, {}),
    PlanSummary(Knobs("high", 1, 8, 16), 0.9, 40.0, 40.0, {}),
])  # fmt: skip
FAST = SupervisedConfig(hidden=32, num_train_budgets=256, num_val_budgets=128, steps=300, lr=1e-2)


def test_labels_are_oracle_indices():
    labels = oracle_labels(TOY, SPACE, torch.tensor([5.0, 15.0, 25.0, 80.0]))
    # tiers (low, medium, high), top_k 4..8, blocks 12..16; 5 ms is below every plan -> the cheapest
    assert labels.tolist() == [[0, 0, 0], [0, 0, 0], [1, 2, 2], [2, 4, 4]]


def test_knob_accuracy_counts_all_three():
    predicted = torch.tensor([[0, 0, 0], [1, 2, 2], [2, 4, 3]])
    labels = torch.tensor([[0, 0, 0], [1, 1, 2], [2, 4, 4]])
    # tier 3/3, top_k 2/3, num_blocks 2/3, all three only row 0 -> 1/3
    assert knob_accuracy(predicted, labels) == pytest.approx(
        {"tier": 1.0, "top_k": 2 / 3, "num_blocks": 2 / 3, "all": 1 / 3}
    )


def test_learns_a_three_plan_table(tmp_path):
    model, metrics = train_supervised(TOY, SPACE, FAST)
    assert metrics["val"]["all"] >= 0.95, metrics
    assert [model.choose(b) for b in (12.0, 30.0, 60.0)] == [
        ("low", 1, 4, 12), ("medium", 1, 6, 14), ("high", 1, 8, 16)
    ]
    save_supervised(tmp_path / "sup.pt", model, metrics)
    loaded, saved_metrics = load_supervised(tmp_path / "sup.pt", expected_knob_space=SPACE)
    assert saved_metrics == metrics
    budgets = torch.tensor([11.0, 25.0, 45.0])
    assert torch.equal(loaded.choose_indices(budgets), model.choose_indices(budgets))
    other = dataclasses.replace(SPACE, top_k_values=(6, 7, 8))
    with pytest.raises(ValueError, match="another KnobSpace"):
        load_supervised(tmp_path / "sup.pt", expected_knob_space=other)


def test_bad_config_and_file(tmp_path):
    with pytest.raises(ValueError, match="feature_dim"):
        SupervisedConfig(feature_dim=3)
    (tmp_path / "x.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="x.pt"):
        load_supervised(tmp_path / "x.pt")
