"""What every fault test asserts: nothing lost. Histories hold every step and epoch once, every
checkpoint reads back, and the MLflow run logged each step once and ended with the right status."""

from __future__ import annotations

import csv
from pathlib import Path

from mlflow.tracking import MlflowClient

from adactrl.controller import load_controller
from adactrl.metrics import LOSS_TOTAL, VAL_REWARD
from adactrl.training.checkpoints import BEST_MODEL, epoch_checkpoint_name


def history_keys(path: Path, key: str) -> list[int]:
    with open(path, newline="") as f:
        return [int(row[key]) for row in csv.DictReader(f)]


def assert_nothing_lost(outcome, *, steps: int, epochs: int, status: str = "FINISHED") -> None:
    run_dir = Path(outcome.output_dir)
    assert history_keys(run_dir / "training_history.csv", "step") == list(range(1, steps + 1))
    assert history_keys(run_dir / "validation_history.csv", "epoch") == list(range(0, epochs + 1))
    for epoch in range(1, epochs + 1):
        _, extra = load_controller(run_dir / epoch_checkpoint_name(epoch))
        assert extra["trainer"]["epoch"] == epoch
    load_controller(run_dir / BEST_MODEL)
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    assert_mlflow_consistent(outcome.tracking_uri, outcome.run_id, steps=steps, epochs=epochs, status=status)


def assert_mlflow_consistent(uri: str, run_id: str, *, steps: int, epochs: int, status: str = "FINISHED") -> None:
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == status
    assert [m.step for m in client.get_metric_history(run_id, LOSS_TOTAL)] == list(range(1, steps + 1))
    assert len(client.get_metric_history(run_id, VAL_REWARD)) == epochs + 1  # untrained + each epoch
