"""The suite never touches the user's home: conftest points HOME at a temp dir and gives Ray a
token file of its own, so a machine that never ran Ray passes as well as one that did."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import RAY_TOKEN_PATH, TEST_HOME


def test_home_is_the_session_temp_dir():
    assert Path.home() == TEST_HOME
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(RAY_TOKEN_PATH)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "RAY_ADDRESS" not in os.environ


def test_local_ray_uses_the_session_token_and_writes_no_home_token(ray_local):
    # With no token anywhere, a local ray.init() generates ~/.ray/auth_token; with the session's
    # RAY_AUTH_TOKEN_PATH it reads that file and writes nothing under HOME.
    @ray_local.remote(num_cpus=0)
    def token_path() -> str | None:
        return os.environ.get("RAY_AUTH_TOKEN_PATH")

    assert ray_local.get(token_path.remote()) == str(RAY_TOKEN_PATH)
    assert not (TEST_HOME / ".ray" / "auth_token").exists()
