"""RunRecorder and the MLflow conventions: env variables, tags, curves, and fail-fast checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adactrl.training.outputs import (
    BUDGET_CURVES,
    LOCK_FILE,
    TRAINING_CURVES,
    BudgetPoint,
    RunRecorder,
    budget_points,
    check_tracking_uri,
    check_writable,
    claim_run_dir,
    existing_run_files,
    resolve_experiment,
    resolve_tracking_uri,
    run_tags,
)


def test_flag_wins_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"
    assert resolve_experiment(None) == "adactrl-train"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/env.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert resolve_tracking_uri(None) == "sqlite:////tmp/env.db"
    assert resolve_experiment(None) == "from-env"
    assert resolve_tracking_uri("sqlite:////tmp/flag.db") == "sqlite:////tmp/flag.db"
    assert resolve_experiment("from-flag") == "from-flag"


@dataclass
class _Record:
    budget_ms: float
    accuracy: float
    latency_ms: dict[str, float]
    violated: bool

    @property
    def total_ms(self) -> float:
        return self.latency_ms["total"]


def test_budget_points_average_per_budget():
    records = [_Record(10.0, 1.0, {"total": 8.0}, False), _Record(10.0, 0.0, {"total": 12.0}, True),
               _Record(20.0, 1.0, {"total": 15.0}, False)]  # fmt: skip
    # budget 10: accuracy (1 + 0) / 2, latency (8 + 12) / 2, one of two violated
    assert budget_points(records) == [BudgetPoint(10.0, 0.5, 10.0, 0.5), BudgetPoint(20.0, 1.0, 15.0, 0.0)]


def test_an_unreachable_tracking_server_fails_in_seconds_naming_the_uri():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(ValueError, match=f"cannot reach the MLflow tracking server at {uri}"):
        check_tracking_uri(uri)


def test_a_sqlite_store_in_a_missing_folder_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    with pytest.raises(ValueError, match="does not exist or cannot be written"):
        check_tracking_uri(uri)
    check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_writable(path)
    check_writable(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())


def test_run_tags_name_model_datasets_and_commit():
    tags = run_tags(None, ("synthetic", "textvqa"))
    assert tags["adactrl.model_path"] == "embedded (shipped)" and tags["adactrl.datasets"] == "synthetic,textvqa"
    commit = tags.get("mlflow.source.git.commit")
    assert commit is None or len(commit) == 40  # a checkout has one; an installed wheel does not


def test_recorder_writes_tags_curves_and_closes_the_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = RunRecorder(tmp_path / "run", tracking_uri=uri, experiment="exp", run_name="r",
                           tags={"adactrl.model_path": "m"})  # fmt: skip
    for epoch, acc in enumerate((0.5, 0.6, 0.7)):
        recorder.log_validation(epoch, epoch * 4, {"val/reward": acc - 0.1, "val/accuracy": acc,
                                                   "val/latency_ms": 20.0, "val/violation_rate": 0.05})  # fmt: skip
    recorder.log_budget_curves([BudgetPoint(10.0, 0.5, 9.0, 0.0), BudgetPoint(20.0, 0.7, 15.0, 0.0)])
    recorder.finish(ok=True)
    client = MlflowClient(uri)
    run = client.get_run(recorder.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["adactrl.model_path"] == "m"
    artifacts = {a.path for a in client.list_artifacts(recorder.run_id)}
    assert {TRAINING_CURVES, BUDGET_CURVES} <= artifacts
    for name in (TRAINING_CURVES, BUDGET_CURVES):
        assert Path(tmp_path / "run" / name).read_bytes()[:4] == b"\x89PNG"
    assert [m.value for m in client.get_metric_history(recorder.run_id, "val/accuracy")] == [0.5, 0.6, 0.7]


def _lock(path: Path, pid: int) -> None:
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))


def test_a_second_run_into_a_locked_dir_is_refused(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            _lock(tmp_path / LOCK_FILE, other.pid)
            with pytest.raises(ValueError, match=f"in use by another run \\(pid {other.pid}"):
                with claim_run_dir(tmp_path, resume=False, overwrite=False):
                    pass
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == other.pid  # not taken from it
        finally:
            other.kill()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _lock(tmp_path / LOCK_FILE, int(dead.stdout))
    with claim_run_dir(tmp_path, resume=False, overwrite=False):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and not (tmp_path / LOCK_FILE).exists()


def test_a_dir_holding_a_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "checkpoint_epoch_1.pt").write_bytes(b"old")
    (tmp_path / "training_history.csv").write_text("step,epoch\n1,1\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a run \\(checkpoint_epoch_1.pt, training_history.csv\\)"):
        with claim_run_dir(tmp_path, resume=False, overwrite=False):
            pass
    assert (tmp_path / "checkpoint_epoch_1.pt").read_bytes() == b"old" and not (tmp_path / LOCK_FILE).exists()
    with claim_run_dir(tmp_path, resume=True, overwrite=False):
        assert (tmp_path / "checkpoint_epoch_1.pt").exists()
    with claim_run_dir(tmp_path, resume=False, overwrite=True):
        assert existing_run_files(tmp_path) == []
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_a_reopened_run_never_logs_a_step_twice(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = RunRecorder(tmp_path / "run", tracking_uri=uri, experiment="exp")
    for step in (1, 2, 3):  # the killed attempt got to step 3; its checkpoint holds step 2
        first.log_train_step(step, 1, {"loss/total": float(step)})
    first.finish(ok=False)
    resumed = RunRecorder(tmp_path / "run", tracking_uri=uri, experiment="exp", run_id=first.run_id)
    resumed.train_history.truncate(2)
    for step in (3, 4):
        resumed.log_train_step(step, 2, {"loss/total": 10.0 * step})
    resumed.finish(ok=True)
    history = MlflowClient(uri).get_metric_history(first.run_id, "loss/total")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [r["loss/total"] for r in resumed.train_history.rows] == ["1.0", "2.0", 30.0, 40.0]



def test_a_replayed_epoch_is_not_logged_twice_but_validation_at_the_same_step_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = RunRecorder(tmp_path / "run", tracking_uri=uri, experiment="exp")
    for step in (1, 2):
        recorder.log_train_step(step, 1, {"loss/total": float(step)})
    recorder.log_validation(1, 2, {"val/accuracy": 0.5})  # the epoch's last step: a new key, kept
    recorder.log_train_step(2, 1, {"loss/total": 99.0})  # a lost learner's epoch replayed
    recorder.finish(ok=True)
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(recorder.run_id, "loss/total")] == [(1, 1.0), (2, 2.0)]
    assert [m.step for m in client.get_metric_history(recorder.run_id, "val/accuracy")] == [2]
