"""`adactrl serve` as a user runs it: bad input refused before Ray starts; SIGTERM shuts down the
application and the Ray instance it started, leaving no process behind."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from adactrl.cli import main
from tests.serving.test_http import free_port, post_infer

REPO = Path(__file__).resolve().parents[2]


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment holds `marker`: the command and everything it started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_bad_input_is_refused_before_ray_starts(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "--controller" in capsys.readouterr().err
    assert main(["serve", "--controller", str(tmp_path / "missing.pt")]) == 2
    assert "no controller checkpoint" in capsys.readouterr().err
    assert main(["serve", "--controller", str(tmp_path / "missing.pt"), "--num_replicas", "0"]) == 2
    assert "--num_replicas must be >= 1" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc to find leftover processes")
def test_sigterm_stops_the_server_and_its_ray_instance(checkpoint):
    marker = f"ADACTRL_SERVE_TEST={uuid.uuid4().hex}"
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", **dict([marker.split("=")]))
    command = [sys.executable, "-m", "adactrl.cli", "serve", "--controller", checkpoint, "--port", str(port),
               "--calibration_runs", "2", "--num_threads", "1"]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # the proxy may be up before the application
                assert server.poll() is None, server.stdout.read()
            time.sleep(1.0)
        response = post_infer(f"http://127.0.0.1:{port}", budget_ms=60_000)
        assert response.status_code == 200, response.text
        assert len(marked_processes(marker)) > 3  # the command, Ray's GCS, raylet, Serve's actors
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output[-3000:]
    assert "adactrl serve: stopping" in output
    deadline = time.monotonic() + 30  # Ray's processes exit after the command's shutdown asks them to
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marked_processes(marker) == []
