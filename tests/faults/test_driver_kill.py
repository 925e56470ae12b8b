"""The driver (`python -m adactrl.cli train`, a subprocess on the shared Ray instance) killed with
SIGKILL after its first checkpoint, then resumed. While it runs, a second run into its directory
is refused and touches nothing. The resumed run takes over the dead run's lock, logs every step
once to the histories and to MLflow, and ends FINISHED."""

import json
import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from adactrl.cli import main
from adactrl.training.outputs import LOCK_FILE
from tests.faults.checks import assert_mlflow_consistent, history_keys

EPOCHS = 4


def train_argv(model_dir: str, run_dir, uri: str, address: str, *extra: str) -> list[str]:
    return ["train", "--model_path", model_dir, "--output_dir", str(run_dir), "--mlflow_tracking_uri", uri,
            "--ray_address", address, "--num_epochs", str(EPOCHS), "--num_train_samples", "4",
            "--num_val_samples", "2", "--batch_size", "2", "--group_size", "2", "--num_workers", "1",
            "--worker_cpus", "0.5", "--learner_cpus", "0.5", "--budget_range_ms", "5", "500",
            "--num_val_budgets", "2", "--oracle_samples", "0", *extra]  # fmt: skip


def test_a_killed_driver_resumes_and_a_second_run_into_its_dir_is_refused(tmp_path, tiny_model_dir, ray_local,
                                                                          capsys):  # fmt: skip
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = train_argv(tiny_model_dir, run_dir, uri, ray_local.get_runtime_context().gcs_address)
    driver = subprocess.Popen([sys.executable, "-m", "adactrl.cli", *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoint_epoch_1.pt").exists():
            assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before a checkpoint"
            time.sleep(0.1)
        first = (run_dir / "checkpoint_epoch_1.pt").read_bytes()
        assert main(argv) == 2  # a second run into the same dir, while the first runs
        assert f"in use by another run (pid {driver.pid}" in capsys.readouterr().err
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == driver.pid
        assert (run_dir / "checkpoint_epoch_1.pt").read_bytes() == first
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    assert not (run_dir / f"checkpoint_epoch_{EPOCHS}.pt").exists(), "killed too late to test a resume"

    assert (run_dir / LOCK_FILE).exists()
    assert main([*argv, "--resume"]) == 0
    steps = 2 * EPOCHS
    assert history_keys(run_dir / "training_history.csv", "step") == list(range(1, steps + 1))
    assert history_keys(run_dir / "validation_history.csv", "epoch") == list(range(EPOCHS + 1))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("adactrl-train").experiment_id])
    assert_mlflow_consistent(uri, run.info.run_id, steps=steps, epochs=EPOCHS)
    assert not (run_dir / LOCK_FILE).exists()  # the dead driver's lock was taken over, then released
