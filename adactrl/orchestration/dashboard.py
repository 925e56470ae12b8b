"""Live training metrics for the Ray dashboard, through `ray.util.metrics`.

`TrainingDashboard(run)` is a training observer (`run_training(..., observers=[...])`): every
learner update (`on_batch`) and every weight publish (`on_publish`) refreshes five gauges (and
one counter), each tagged with the run's name:

    adactrl_rollouts_per_s   plans one worker executed per second on its last batch (DESIGN §6)
    adactrl_rollouts_total   plans executed so far (a counter: rate() of it is the run's throughput)
    adactrl_reward           mean reward of the last rollout batch
    adactrl_violation_rate   fraction of the last batch's plans over their budget
    adactrl_policy_lag       mean versions between the policy that sampled a batch and the learner's
    adactrl_weight_sync_ms   time the learner took to put a new weight version into the object store

Ray exports them as `ray_<name>` on each node's metrics port, which Prometheus scrapes and the
dashboard's Metrics view (with Grafana) plots. The numbers are the learner's own metrics for the
batch (`adactrl.metrics`), the ones MLflow logs.

No-op safety: the Ray metrics are registered on the first update made while Ray is initialized.
Without Ray (`run_training(local=True)`, unit tests), or after `ray.shutdown()`, an update only
refreshes `values`; nothing is registered or sent, and nothing raises.
"""

from __future__ import annotations

import functools

import ray
from ray.util.metrics import Counter, Gauge

from adactrl.metrics import (
    POLICY_LAG,
    REWARD_TOTAL,
    ROLLOUT_NUM_PLANS,
    ROLLOUT_PLANS_PER_S,
    ROLLOUT_VIOLATION_RATE,
    WEIGHT_SYNC_MS,
)
from adactrl.training.events import BatchEvent, PublishEvent, TrainingObserver

ROLLOUTS_PER_S = "adactrl_rollouts_per_s"
ROLLOUTS_TOTAL = "adactrl_rollouts_total"
REWARD = "adactrl_reward"
VIOLATION_RATE = "adactrl_violation_rate"
POLICY_LAG_VERSIONS = "adactrl_policy_lag"
WEIGHT_SYNC = "adactrl_weight_sync_ms"

GAUGES: dict[str, tuple[str, str]] = {
    ROLLOUT_PLANS_PER_S: (ROLLOUTS_PER_S, "plans one rollout worker executed per second on its last batch"),
    REWARD_TOTAL: (REWARD, "mean reward of the last rollout batch"),
    ROLLOUT_VIOLATION_RATE: (VIOLATION_RATE, "fraction of the last rollout batch's plans over their budget"),
    POLICY_LAG: (POLICY_LAG_VERSIONS, "mean policy versions between sampling a record and the newest version"),
    WEIGHT_SYNC_MS: (WEIGHT_SYNC, "ms to publish a new weight version to the object store"),
}
"""MLflow metric key -> (Ray metric name, description)."""
TAG_KEYS = ("run", "worker")
"""`run` is the run's output directory name; `worker` is the rollout worker index, "" where none applies."""


@functools.cache
def _ray_metrics() -> tuple[dict[str, Gauge], Counter]:
    """One set per process: trials and tests that run several trainings in one process share it."""
    gauges = {key: Gauge(name, description, tag_keys=TAG_KEYS) for key, (name, description) in GAUGES.items()}
    return gauges, Counter(ROLLOUTS_TOTAL, "rollout plans executed", tag_keys=TAG_KEYS)


class TrainingDashboard(TrainingObserver):
    """The dashboard metrics of one training run; `values` holds the last value of each gauge."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.values: dict[str, float] = {}
        """MLflow metric key -> last value, kept with or without Ray."""
        self.num_batches = 0
        self.num_plans = 0
        self.registered: tuple[str, ...] = ()
        """Ray metric names this dashboard has sent values to (empty until Ray is up)."""

    def on_publish(self, event: PublishEvent) -> None:
        self._set({WEIGHT_SYNC_MS: event.publish_ms}, worker="")

    def on_batch(self, event: BatchEvent) -> None:
        """Throughput, reward, violations and policy lag of the batch, as the learner logged them."""
        keys = (ROLLOUT_PLANS_PER_S, REWARD_TOTAL, ROLLOUT_VIOLATION_RATE, POLICY_LAG)
        values = {k: event.metrics[k] for k in keys if k in event.metrics}
        plans = int(event.metrics.get(ROLLOUT_NUM_PLANS, 0))
        self.num_batches += 1
        self.num_plans += plans
        self._set(values, worker=str(event.worker_index), plans=plans)

    def _set(self, values: dict[str, float], *, worker: str, plans: int = 0) -> None:
        self.values.update(values)
        if not ray.is_initialized():
            return
        gauges, counter = _ray_metrics()
        tags = {"run": self.run, "worker": worker}
        for key, value in values.items():
            gauges[key].set(float(value), tags=tags)
        if plans:
            counter.inc(plans, tags=tags)
        names = [GAUGES[key][0] for key in values] + ([ROLLOUTS_TOTAL] if plans else [])
        self.registered += tuple(n for n in names if n not in self.registered)
