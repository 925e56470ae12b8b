"""ServeConfig from flags and from a `serve deploy` file: bad values refused with what to change."""

from pathlib import Path

import pytest

from adactrl.serving.config import IMPORT_PATH, ServeConfig, read_serve_file

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_replicas", 0, "--num_replicas"), ("replica_cpus", 0.0, "--replica_cpus"), ("port", 70000, "--port"),
    ("device", "tpu", "--device"), ("num_threads", 0, "--num_threads"), ("max_new_tokens", 0, "--max_new_tokens"),
])  # fmt: skip
def test_bad_settings_are_refused_naming_the_flag(field, value, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(controller="c.pt", **{field: value})


def test_a_cuda_replica_asks_for_one_gpu_and_runs_on_its_own():
    config = ServeConfig(controller="c.pt", device="cuda:1")
    assert (config.replica_gpus, config.replica_device) == (1, "cuda")
    assert (ServeConfig(controller="c.pt").replica_gpus, ServeConfig(controller="c.pt").replica_device) == (0, "cpu")


def test_unknown_arguments_are_named():
    with pytest.raises(ValueError, match="unknown serve argument.*replicas"):
        ServeConfig.from_args({"controller": "c.pt", "replicas": 2})


def test_the_cluster_serve_file_gives_the_config_and_flags_override_it():
    config = read_serve_file(REPO / "cluster" / "serve_config.yaml", {"port": 9000})
    assert config.device == "cuda" and config.num_replicas >= 1 and config.controller.endswith("best_model.pt")
    assert (config.host, config.port) == ("0.0.0.0", 9000)


def test_a_file_without_the_adactrl_application_is_refused(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("applications:\n  - name: x\n    import_path: other.module:app\n")
    with pytest.raises(ValueError, match=IMPORT_PATH):
        read_serve_file(path, {})
    with pytest.raises(FileNotFoundError):
        read_serve_file(tmp_path / "missing.yaml", {})


def test_the_cluster_serve_file_is_a_valid_serve_deploy_config():
    import yaml
    from ray.serve import schema

    data = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())
    deploy = schema.ServeDeploySchema(**data)
    assert [app.import_path for app in deploy.applications] == [IMPORT_PATH]
