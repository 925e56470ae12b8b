"""`adactrl tune`: search spaces, failures before any trial runs, the reward trials are compared
on, and a 2-trial ASHA search on the shared Ray instance."""

import csv
import functools
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from adactrl.cli import main
from adactrl.commands.tune import base_args, trial_config
from adactrl.knobs import Knobs
from adactrl.reward import RewardConfig, compute_reward
from adactrl.training.config import TrainConfig
from adactrl.training.records import EvalRecord
from adactrl.orchestration.tuning import (
    check_feasible,
    check_reachable,
    check_search_space,
    connect,
    load_search_space,
    reference_reward,
    trial_bundles,
)

REPO = Path(__file__).resolve().parents[2]
MAKE_CONFIG = functools.partial(trial_config, base_args([]))


def write(tmp_path: Path, body: str, name: str = "space.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shipped_tune_configs_are_valid_and_headed_by_their_launch_command():
    paths = sorted((REPO / "tune_configs").glob("*.py"))
    assert paths
    for path in paths:
        assert path.read_text().startswith(f"# adactrl tune --config tune_configs/{path.name} --num_samples ")
        check_search_space(load_search_space(path), MAKE_CONFIG)


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        ("def search_space(:\n", ValueError, "does not load"),
        ("SPACE = {}\n", ValueError, "must define search_space"),
        ("def search_space():\n    return {}\n", ValueError, "non-empty dict"),
        ("def search_space():\n    return {'learning_rate': 0.1}\n", ValueError, "unknown setting"),
        ("def search_space():\n    return {'num_epochs': 3}\n", ValueError, "ASHA's horizon"),
        ("from ray import tune\ndef search_space():\n    return {'group_size': tune.randint(1, 4)}\n",
         ValueError, "group_size=1 is not a valid"),
        ("from ray import tune\ndef search_space():\n    return {'lr': tune.uniform(-1.0, 1.0)}\n",
         ValueError, "lr=-1.0"),
        ("from ray import tune\ndef search_space():\n    return {'train': {'lr': tune.uniform(0.1, 1)}}\n",
         ValueError, "not nested dicts"),
    ],
)  # fmt: skip
def test_an_invalid_tune_config_fails_with_a_clear_error(tmp_path, body, error, match):
    with pytest.raises(error, match=match):
        check_search_space(load_search_space(write(tmp_path, body)), MAKE_CONFIG)


def test_the_cli_refuses_a_missing_config_and_bad_base_flags(tmp_path, capsys):
    assert main(["tune", "--config", str(tmp_path / "nope.py"), "--num_samples", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    config = str(REPO / "tune_configs" / "cpu_small.py")
    assert main(["tune", "--config", config, "--", "--output_dir", "x"]) == 2
    assert "set it on `adactrl tune` itself" in capsys.readouterr().err
    assert main(["tune", "--config", config, "--", "--num_workers", "0"]) == 2
    assert "num_workers must be >= 1" in capsys.readouterr().err


def test_an_unreachable_ray_address_fails_in_seconds(monkeypatch):
    import adactrl.orchestration.tuning as tuning

    monkeypatch.setattr(tuning.ray, "is_initialized", lambda: False)  # as in a fresh `adactrl tune`
    began = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach a Ray cluster"):
        connect(f"127.0.0.1:{closed_port()}")
    assert time.monotonic() - began < 10
    with pytest.raises(ValueError, match="ray job submit"):
        check_reachable("http://127.0.0.1:8265")


def test_a_trial_no_node_can_hold_fails_before_tune_starts(ray_local):
    # 2 CPUs: the shared instance holds a driver, a learner and a worker of half a CPU each.
    check_feasible(trial_bundles(TrainConfig(num_workers=1, worker_cpus=0.5, learner_cpus=0.5), 0))
    with pytest.raises(ValueError, match=r"reserves \{'CPU': 4.0\}.*lower --num_workers"):
        check_feasible(trial_bundles(TrainConfig(num_workers=2), 0))
    with pytest.raises(ValueError, match="no node fits"):
        check_feasible(trial_bundles(TrainConfig(num_workers=1), 1))


def eval_record(accuracy: float, latency_ms: float, budget_ms: float, config: RewardConfig) -> EvalRecord:
    reward = compute_reward(accuracy, latency_ms, budget_ms, 0.5, config)
    return EvalRecord(0, budget_ms, Knobs("low", 1, 4, 12), accuracy, {"total": latency_ms}, 0.5, reward, 1)


def test_reference_reward_rescores_a_trial_with_the_base_coefficients():
    five_term = {"miss_penalty": 0.0, "missed_accuracy_weight": 1.0}  # the seeds' form of the reward
    base = RewardConfig(alpha=1.0, beta=0.1, gamma=2.0, delta=0.0, epsilon=0.2, **five_term)
    trial = RewardConfig(alpha=1.0, beta=0.3, gamma=1.0, delta=0.5, epsilon=0.4, **five_term)
    records = [eval_record(1.0, 10.0, 20.0, trial), eval_record(0.0, 30.0, 20.0, trial)]
    # base: 1 - 0.1*0.5 - 0 + 0 - 0.2*0.5 = 0.85 ; 0 - 0.1*1.5 - 2*0.5 + 0 - 0.2*0.5 = -1.25
    assert reference_reward(records, base) == pytest.approx((0.85 - 1.25) / 2)
    # With the trial's own coefficients it is the trial's own validation reward.
    assert reference_reward(records, trial) == pytest.approx(np.mean([r.reward.total for r in records]))


def test_two_trial_asha_search_records_both_trials_and_their_mlflow_runs(tmp_path, tiny_model_dir, ray_local, capsys):
    space = write(tmp_path, "from ray import tune\n\ndef search_space():\n    return {"
                            "'lr': tune.choice([0.001, 0.03]), 'beta': tune.choice([0.05, 0.2])}\n")  # fmt: skip
    out, db = tmp_path / "search", tmp_path / "mlflow.db"
    began = time.monotonic()
    code = main([
        "tune", "--config", str(space), "--num_samples", "2", "--output_dir", str(out),
        "--mlflow_tracking_uri", f"sqlite:///{db}", "--",
        "--model_path", tiny_model_dir, "--num_epochs", "2", "--num_workers", "1", "--num_train_samples", "4",
        "--num_val_samples", "2", "--batch_size", "2", "--group_size", "2", "--budget_range_ms", "5", "500",
        "--num_val_budgets", "2", "--oracle_samples", "0", "--worker_cpus", "0.5", "--learner_cpus", "0.5",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    print(f"2-trial search: {time.monotonic() - began:.1f} s")

    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert row["status"] in ("finished", "stopped") and int(row["epochs"]) >= 1, row
        assert (Path(row["output_dir"]) / "validation_history.csv").is_file()
    best = json.loads((out / "best_config.json").read_text())
    assert best["best_val_reward"] == pytest.approx(max(float(r["best_val_reward"]) for r in rows))
    assert "best configuration" in printed and "to train it: adactrl train" in printed

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("adactrl-tune").experiment_id])
    by_trial = {run.data.tags["adactrl.tune.trial_id"]: run for run in runs}
    assert set(by_trial) == {row["trial_id"] for row in rows}
    for row in rows:
        run = by_trial[row["trial_id"]]
        assert run.info.run_id == row["mlflow_run_id"]
        assert run.info.status == ("FINISHED" if row["status"] == "finished" else "KILLED")
        assert float(run.data.params["learner.lr"]) == float(row["lr"])
        assert float(run.data.params["reward.beta"]) == float(row["beta"])
        assert client.get_metric_history(run.info.run_id, "val/reward")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"validation_history.csv", "best_model.pt"} <= artifacts  # a stopped trial's too
