"""`ray job submit` of a tiny training run to a real head started with `ray start --head`.

The head runs in its own temp dir on free loopback ports, apart from the session's shared Ray
instance, and is stopped by process id: `ray stop` would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import RAY_TOKEN_PATH

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
SUBMIT = REPO / "cluster" / "submit.sh"
HEAD_MARKER = "ADACTRL_TEST_RAY_HEAD"

pytestmark = pytest.mark.skipif(not RAY.exists() or not Path("/proc").is_dir(), reason="needs the ray CLI and /proc")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def client_env(dashboard_url: str) -> dict[str, str]:
    """The head's auth mode and token: the session's own token file (tests/conftest.py), never
    the user's ~/.ray/auth_token."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(RAY_TOKEN_PATH), RAY_ADDRESS=dashboard_url)
    env["PATH"] = f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def processes_of(temp_dir: str) -> list[int]:
    """Every process the head started: each inherits HEAD_MARKER=temp_dir in its environment (the
    Ray client server, for one, outlives `ray start` with no temp dir on its command line)."""
    marker = f"{HEAD_MARKER}={temp_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return sorted(found)


def stop_head(temp_dir: str) -> None:
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = processes_of(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while processes_of(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not processes_of(temp_dir), "the test's Ray head did not stop"


def start_head(command: list[str], env: dict[str, str], temp_dir: str, timeout_s: float = 150.0) -> tuple[bool, str]:
    """Run `ray start`; give up early when the raylet aborts. Ray 2.60's raylet gives the dashboard
    agent 15 s to come up and aborts when a busy machine makes the agent's imports slower."""
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        while process.poll() is None:
            aborted = any("Check failed" in log.read_text(errors="replace")
                          for log in Path(temp_dir).glob("session_*/logs/raylet.out"))  # fmt: skip
            if aborted or time.monotonic() > deadline:
                process.kill()
                break
            time.sleep(0.5)
        process.wait()
        output.seek(0)
        return process.returncode == 0, output.read()


@pytest.fixture
def ray_head():
    """A head on loopback with the Jobs API (dashboard) and token auth; yields its dashboard URL."""
    # No prestarted idle workers: on a busy machine they slow the agents the raylet waits for.
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(RAY_TOKEN_PATH),
               RAY_enable_worker_prestart="0")
    env.pop("RAY_ADDRESS", None)
    temp_dirs: list[str] = []
    try:
        for _ in range(3):  # a retry finds the agent's modules in the page cache
            temp_dirs.append(tempfile.mkdtemp(prefix="adactrl-ray-", dir="/tmp"))  # short: Ray's socket paths
            env[HEAD_MARKER] = temp_dirs[-1]
            gcs, dashboard, client, agent, agent_grpc, env_agent, metrics, node_manager, object_manager = free_ports(9)
            low = 30000 + (os.getpid() % 300) * 100
            command = [
                str(RAY), "start", "--head", "--num-cpus=2", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
                f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
                f"--object-manager-port={object_manager}", f"--min-worker-port={low}", f"--max-worker-port={low + 99}",
                f"--temp-dir={temp_dirs[-1]}", "--disable-usage-stats",
            ]  # fmt: skip
            started, output = start_head(command, env, temp_dirs[-1])
            if started:
                break
            stop_head(temp_dirs[-1])
        else:
            pytest.fail(f"`ray start --head` failed 3 times; last output:\n{output}")
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        for temp_dir in temp_dirs:
            stop_head(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_tiny_training_to_completion(ray_head, tiny_model_dir, tmp_path):
    began = time.monotonic()
    out, db = tmp_path / "run", tmp_path / "mlflow.db"
    train = [
        sys.executable, "-m", "adactrl.cli", "train", "--model_path", tiny_model_dir, "--output_dir", str(out),
        "--mlflow_tracking_uri", f"sqlite:///{db}", "--num_epochs", "1", "--num_train_samples", "4",
        "--num_val_samples", "2", "--batch_size", "2", "--group_size", "2", "--num_workers", "1",
        "--budget_range_ms", "5", "500", "--num_val_budgets", "2", "--oracle_samples", "0",
        "--ray_address", "auto",
    ]  # fmt: skip
    submission = f"adactrl-test-{uuid.uuid4().hex[:8]}"
    job = subprocess.run(["bash", str(SUBMIT), "--submission-id", submission, "--", *train],
                         env=client_env(ray_head), capture_output=True, text=True, timeout=240)  # fmt: skip
    log = job.stdout + job.stderr
    assert job.returncode == 0, log
    assert f"Job '{submission}' succeeded" in log
    assert "outputs in" in log  # the training command's last line, from the job's log

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["best_epoch"] == 1
    assert {"best_model.pt", "checkpoint_epoch_1.pt", "training_history.csv"} <= {p.name for p in out.iterdir()}
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("adactrl-train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["num_workers"] == "1"
    print(f"job submit test: {time.monotonic() - began:.1f} s after the head was up")


def test_submit_script_refuses_an_unreachable_address_quickly(tmp_path):
    (port,) = free_ports(1)  # closed again: nothing listens there
    began = time.monotonic()
    job = subprocess.run(["bash", str(SUBMIT), "--", "echo", "hi"], env=client_env(f"http://127.0.0.1:{port}"),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert job.returncode == 2
    assert "cannot reach the Ray dashboard" in job.stderr
    assert time.monotonic() - began < 20


def test_submit_script_refuses_a_gcs_address(tmp_path):
    job = subprocess.run(["bash", str(SUBMIT), "--", "echo", "hi"], env=client_env("127.0.0.1:6379"),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert job.returncode == 2 and "not a dashboard address" in job.stderr
