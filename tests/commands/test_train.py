"""`adactrl train` as a user runs it: MLflow's environment variables, and inputs refused before
any model loads or Ray starts."""

from __future__ import annotations

import socket
import time

from mlflow.tracking import MlflowClient

from adactrl.cli import main

TINY = ["--num_epochs", "1", "--num_train_samples", "4", "--num_val_samples", "2", "--batch_size", "2",
        "--group_size", "2", "--num_workers", "1", "--budget_range_ms", "5", "500", "--num_val_budgets", "2",
        "--oracle_samples", "0"]  # fmt: skip


def test_mlflow_tracking_uri_from_the_environment_holds_the_whole_run(ray_local, tiny_model_dir, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    db = tmp_path / "t.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    out = tmp_path / "run"
    assert main(["train", "--model_path", tiny_model_dir, "--output_dir", str(out), *TINY]) == 0
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("from-env").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["num_workers"] == "1" and run.data.params["data.num_train_samples"] == "4"
    assert run.data.tags["adactrl.model_path"] == tiny_model_dir and run.data.tags["adactrl.datasets"] == "synthetic"
    assert "val/accuracy" in run.data.metrics and "loss/total" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "best_model.pt", "train.log", "training_curves.png", "budget_curves.png"} <= artifacts
    assert (out / "training_curves.png").is_file()
    assert not (tmp_path / "mlflow.db").exists()


def test_the_flag_overrides_the_environment(ray_local, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    flag_db = tmp_path / "flag.db"
    argv = ["train", "--model_path", tiny_model_dir, "--output_dir", str(tmp_path / "run"),
            "--mlflow_tracking_uri", f"sqlite:///{flag_db}", *TINY]  # fmt: skip
    assert main(argv) == 0
    assert flag_db.is_file() and not (tmp_path / "env.db").exists()


def test_an_unreachable_tracking_uri_fails_in_seconds_with_the_uri(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    began = time.monotonic()
    assert main(["train", "--output_dir", str(tmp_path / "run"), "--mlflow_tracking_uri", uri]) == 2
    assert uri in capsys.readouterr().err
    assert time.monotonic() - began < 10 and not (tmp_path / "run" / "train.log").exists()


def test_an_output_dir_that_cannot_be_written_fails_first(tmp_path, capsys):
    taken = tmp_path / "file"
    taken.write_text("")
    assert main(["train", "--output_dir", str(taken)]) == 2
    assert f"--output_dir {taken} is a file" in capsys.readouterr().err


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main(["train", "--output_dir", str(out)]) == 2
    assert "already holds a run (summary.json)" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == "{}"
    assert main(["train", "--output_dir", str(out), "--resume", "--overwrite"]) == 2
    assert "pass one" in capsys.readouterr().err


def test_an_unreachable_ray_address_fails_in_seconds_and_leaves_no_run(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    db = tmp_path / "mlflow.db"
    began = time.monotonic()
    argv = ["train", "--output_dir", str(tmp_path / "run"), "--ray_address", address,
            "--mlflow_tracking_uri", f"sqlite:///{db}"]  # fmt: skip
    assert main(argv) == 2
    assert f"cannot reach a Ray cluster at {address}" in capsys.readouterr().err
    assert time.monotonic() - began < 15 and not db.exists()  # no RUNNING MLflow run left behind
