"""Dashboard metrics: computed as the learner logs them, no-ops without Ray, registered and
updated during a run on Ray."""

import re
import time
import urllib.request

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import adactrl.training.dashboard as dashboard_module
from adactrl.metrics import POLICY_LAG, REWARD_TOTAL, ROLLOUT_PLANS_PER_S, ROLLOUT_VIOLATION_RATE, WEIGHT_SYNC_MS
from adactrl.reward import Reward
from adactrl.training.dashboard import GAUGES, REWARD, ROLLOUTS_TOTAL, TrainingDashboard
from adactrl.training.driver import run_training
from adactrl.training.records import RolloutBatch, RolloutRecord, WeightsRef
from tests.training.helpers import cost_latency, small_config


def record(version: int, reward: float, latency_ms: float, budget_ms: float = 20.0) -> RolloutRecord:
    return RolloutRecord(
        sample_id=0, budget_ms=budget_ms, actions=(0, 0, 0, 0), old_logp=-1.0,
        language_feature=np.zeros(4, np.float32), latency_token=np.zeros(4, np.float32), accuracy=reward,
        latency_ms={"total": latency_ms}, reward=Reward(reward, reward, 0.0, 0.0, 0.0, 0.0),
        policy_version=version, worker_index=1,
    )  # fmt: skip


class FakeBackend:
    def __init__(self, batches):
        self.batches = list(batches)

    def publish(self, weights):
        return weights

    def wait(self):
        return 1, self.batches.pop(0)


def test_values_follow_each_batch_and_publish_without_ray(monkeypatch):
    monkeypatch.setattr(dashboard_module.ray, "is_initialized", lambda: False)
    # Two plans in 0.5 s; sampled at versions 3 and 2 while version 3 is the newest.
    batch = RolloutBatch(epoch=1, request_id=0, records=(record(3, 1.0, 10.0), record(2, 0.0, 30.0)), skipped=(),
                         policy_version=3, worker_index=1, rollout_s=0.5)  # fmt: skip
    backend = FakeBackend([batch])
    dashboard = TrainingDashboard("unit")
    dashboard.attach(backend)

    assert backend.publish(WeightsRef(3, {})).version == 3
    assert backend.wait() == (1, batch)

    values = dict(dashboard.values)
    assert values.pop(WEIGHT_SYNC_MS) >= 0.0
    assert values == {
        ROLLOUT_PLANS_PER_S: 4.0,  # 2 plans / 0.5 s
        REWARD_TOTAL: 0.5,  # (1.0 + 0.0) / 2
        ROLLOUT_VIOLATION_RATE: 0.5,  # 30 ms is over the 20 ms budget, 10 ms is not
        POLICY_LAG: 0.5,  # (3 - 3 + 3 - 2) / 2
    }
    assert (dashboard.num_batches, dashboard.num_plans) == (1, 2)
    assert dashboard.registered == ()  # nothing registered or sent without Ray


def scrape(url: str, name: str, run: str, timeout_s: float) -> list[str]:
    """The node's Prometheus lines of a metric for a run (Ray exports them every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        lines = [line for line in text.splitlines() if line.startswith(f"ray_{name}") and f'run="{run}"' in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(1.0)


def test_metrics_are_registered_and_updated_during_a_ray_run(tmp_path, tiny_model_dir, ray_local):
    ray = ray_local
    config = small_config(tmp_path / "run", tiny_model_dir, num_epochs=1, budget_range_ms=(3.0, 10.0))
    dashboard = TrainingDashboard("dashboard-test")
    after_each_update: list[dict[str, float]] = []

    outcome = run_training(config, latency_fn=cost_latency, backend_hook=dashboard.attach,
                           on_batch=lambda step: after_each_update.append(dict(dashboard.values)))  # fmt: skip

    assert set(dashboard.registered) == {name for name, _ in GAUGES.values()} | {ROLLOUTS_TOTAL}
    assert dashboard.num_batches == outcome.state.step == 2
    client = MlflowClient(outcome.tracking_uri)
    for key in (ROLLOUT_PLANS_PER_S, REWARD_TOTAL, ROLLOUT_VIOLATION_RATE, POLICY_LAG):
        logged = [m.value for m in sorted(client.get_metric_history(outcome.run_id, key), key=lambda m: m.step)]
        assert [values[key] for values in after_each_update] == pytest.approx(logged), key
    assert all(values[WEIGHT_SYNC_MS] >= 0 for values in after_each_update)

    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    lines = scrape(url, REWARD, dashboard.run, timeout_s=60)
    assert lines, f"ray_{REWARD} for run {dashboard.run} never reached {url}"
    exported = float(re.split(r"\s+", lines[-1])[-1])
    assert exported == pytest.approx(dashboard.values[REWARD_TOTAL], abs=1e-6)
