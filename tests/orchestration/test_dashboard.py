"""Dashboard metrics: computed as the learner logs them, no-ops without Ray, registered and
updated during a run on Ray."""

import re
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

import adactrl.orchestration.dashboard as dashboard_module
from adactrl.metrics import (
    POLICY_LAG,
    REWARD_TOTAL,
    ROLLOUT_NUM_PLANS,
    ROLLOUT_PLANS_PER_S,
    ROLLOUT_VIOLATION_RATE,
    WEIGHT_SYNC_MS,
)
from adactrl.orchestration.dashboard import GAUGES, REWARD, ROLLOUTS_TOTAL, TrainingDashboard
from adactrl.orchestration.driver import run_training
from adactrl.training.events import BatchEvent, PublishEvent, TrainingObserver
from tests.training.helpers import cost_latency, small_config


def test_values_follow_each_batch_and_publish_without_ray(monkeypatch):
    monkeypatch.setattr(dashboard_module.ray, "is_initialized", lambda: False)
    dashboard = TrainingDashboard("unit")
    metrics = {ROLLOUT_PLANS_PER_S: 4.0, REWARD_TOTAL: 0.5, ROLLOUT_VIOLATION_RATE: 0.5, POLICY_LAG: 1.0,
               ROLLOUT_NUM_PLANS: 2.0, "loss/total": -0.1}  # fmt: skip

    dashboard.on_publish(PublishEvent(version=3, publish_ms=1.5))
    dashboard.on_batch(BatchEvent(step=1, epoch=1, request_id=0, worker_index=1, metrics=metrics))

    # The gauges take the learner's values for the batch; the loss is not a dashboard gauge.
    assert dashboard.values == {WEIGHT_SYNC_MS: 1.5, ROLLOUT_PLANS_PER_S: 4.0, REWARD_TOTAL: 0.5,
                                ROLLOUT_VIOLATION_RATE: 0.5, POLICY_LAG: 1.0}  # fmt: skip
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

    class AfterEachUpdate(TrainingObserver):
        def on_batch(self, event):
            after_each_update.append(dict(dashboard.values))

    outcome = run_training(config, latency_fn=cost_latency, observers=[dashboard, AfterEachUpdate()])

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
