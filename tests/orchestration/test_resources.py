"""Resource requests the cluster cannot hold are refused in seconds, before the placement group
waits, naming what the cluster has."""

import os
import time

import pytest
from mlflow.tracking import MlflowClient

from adactrl.orchestration.driver import run_training
from adactrl.orchestration.ray_backend import local_cpus
from tests.training.helpers import small_config


def test_more_workers_than_the_cluster_holds_are_refused_in_seconds(tmp_path, tiny_model_dir, ray_local):
    config = small_config(tmp_path / "run", tiny_model_dir, num_workers=64)  # 0.5 CPU each, on 2 CPUs
    began = time.monotonic()
    with pytest.raises(ValueError, match=r"the learner and 64 rollout workers need 32.5 CPUs in all, but the Ray "
                                         r"cluster has 2 CPUs and 0 GPUs: lower --num_workers"):
        run_training(config)
    assert time.monotonic() - began < 30
    assert not list((tmp_path / "run").glob("checkpoint_*.pt"))
    client = MlflowClient(config.mlflow_tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(config.mlflow_experiment).experiment_id])
    assert run.info.status == "FAILED"


def test_a_local_instance_shares_a_core_with_the_learner_but_no_more():
    cores = os.cpu_count() or 1
    workers = [{"CPU": 1.0}] * cores
    assert local_cpus([{"CPU": 1.0}, *workers], shared=1.0) == cores + 1  # 2 workers and the learner on 2 cores
    assert local_cpus([{"CPU": 1.0}, *workers, {"CPU": 1.0}], shared=1.0) == cores  # one worker more: refused
    assert local_cpus([{"CPU": 1.0}, *workers, {"CPU": 1.0}]) == cores + 2  # Tune's trials: no cap
