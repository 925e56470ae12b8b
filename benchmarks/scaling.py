"""Scaling of the training system with simulated rollout workers: learner updates per second, the
fraction of rollouts dropped as stale, weight-broadcast time to all workers and scaling
efficiency, at 1, 2, 4, 8 and 16 workers. Prints a table and writes benchmarks/results/scaling.json.

    nice -n 5 .venv/bin/python benchmarks/scaling.py
    .venv/bin/python benchmarks/scaling.py --profile outputs/profile   # an `adactrl profile` table

Real: the driver (`run_training`), the Trainer's schedule with the default `max_policy_lag`, the
Ray backend and the learner actor (GRPO steps on a controller of the shipped model's size, each
version put in the object store once). Simulated: the rollout workers. Each one sleeps for the
summed latency of the plans a request samples, drawn from the profile's measured (latency,
accuracy) rows and scaled by --time_scale, and returns records with the profile's accuracies and
the reward they imply; its features are random. Without --profile, plan latencies are lognormal
(median 60 ms, sigma 0.35) and accuracies Bernoulli(0.6).

Scaling efficiency is updates/s at N workers over N x updates/s at 1 worker. The broadcast time is
one `ray.put` of the controller's state plus every worker loading it, the median of 10.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adactrl.knobs import Knobs  # noqa: E402
from adactrl.metrics import POLICY_LAG, ROLLOUT_NUM_PLANS, ROLLOUT_NUM_STALE_DROPPED  # noqa: E402
from adactrl.orchestration.driver import run_training  # noqa: E402
from adactrl.orchestration.ray_backend import start_ray  # noqa: E402
from adactrl.reward import Reward  # noqa: E402
from adactrl.training.config import DataConfig, TrainConfig, WorkerConfig  # noqa: E402
from adactrl.training.events import TrainingObserver  # noqa: E402
from adactrl.training.records import (  # noqa: E402
    EvalBatch,
    EvalRecord,
    EvalRequest,
    RolloutBatch,
    RolloutRecord,
    RolloutRequest,
)
from rollout_workers import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
WORKER_COUNTS = (1, 2, 4, 8, 16)
BROADCASTS = 10
TARGETS = {"efficiency_at_16": 0.90, "stale_fraction": 0.05, "broadcast_ms_at_16": 50.0}


@dataclass(frozen=True)
class SimulatedReceipt:
    """`rollout_workers.RolloutReceipt`'s stand-in: the simulated actors do not import the real
    worker's package (it costs each process about 270 MB more, mostly transformers)."""

    request_id: int
    num_records: int


class SimulatedRolloutWorker:
    """A rollout worker's interface without a model: sleeps for the plans' profiled latency.
    `profile` ((latency_ms, accuracy) rows), `sizes` (the knob space's) and `time_scale` are set on
    a subclass per run (Ray ships the subclass to the actors)."""

    profile: tuple[tuple[float, float], ...] = ()
    sizes: tuple[int, ...] = ()
    time_scale: float = 1.0

    def __init__(self, config: WorkerConfig, worker_index: int, *, latency_fn: object = None) -> None:
        self.config = config
        self.worker_index = worker_index
        self.version = -1

    def ping(self) -> int:
        return os.getpid()

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.config.data.num_train_samples, "validation": self.config.data.num_val_samples}

    def load_weights(self, version: int, state: dict) -> int:
        self.version = version
        return version

    def rollout(self, request: RolloutRequest) -> RolloutBatch:
        began = time.perf_counter()
        rng = np.random.default_rng(request.seed)
        d = self.config.controller.d_model
        records = []
        for sample, budget in zip(request.sample_indices, request.budgets_ms):
            for _ in range(request.group_size):
                latency, accuracy = self.profile[int(rng.integers(len(self.profile)))]
                records.append(RolloutRecord(
                    sample_id=sample, budget_ms=budget, actions=tuple(int(rng.integers(n)) for n in self.sizes),
                    old_logp=-float(np.log(np.prod(self.sizes))),
                    language_feature=rng.standard_normal(d).astype(np.float32),
                    latency_token=rng.standard_normal(d).astype(np.float32), accuracy=accuracy,
                    latency_ms={"total": latency, "controller": 0.5}, reward=_reward(accuracy, latency, budget),
                    policy_version=self.version, worker_index=self.worker_index,
                ))  # fmt: skip
        busy = sum(r.latency_ms["total"] for r in records) / 1000.0 * self.time_scale
        time.sleep(max(0.0, busy - (time.perf_counter() - began)))
        return RolloutBatch(request.epoch, request.request_id, tuple(records), (), self.version, self.worker_index,
                            time.perf_counter() - began)  # fmt: skip

    def rollout_with_receipt(
        self, request: RolloutRequest, version: int | None = None, state: dict | None = None
    ) -> tuple[SimulatedReceipt, RolloutBatch]:
        if state is not None:
            self.load_weights(version, state)
        batch = self.rollout(request)
        return SimulatedReceipt(batch.request_id, len(batch.records)), batch

    def evaluate(self, request: EvalRequest, version: int | None = None, state: dict | None = None) -> EvalBatch:
        if state is not None:
            self.load_weights(version, state)
        rng = np.random.default_rng([request.policy_version, *request.sample_indices])
        records = []
        for sample in request.sample_indices:
            for budget in request.budgets_ms:
                latency, accuracy = self.profile[int(rng.integers(len(self.profile)))]
                records.append(EvalRecord(sample, budget, SIMULATED_KNOBS, accuracy, {"total": latency, "controller": 0.5},
                                          reward=_reward(accuracy, latency, budget), policy_version=self.version))  # fmt: skip
        return EvalBatch(tuple(records), (), self.version, self.worker_index)


SIMULATED_KNOBS = Knobs("low", 1, 4, 12)
"""The plan every simulated validation record reports (the simulation times no plan)."""


def _reward(accuracy: float, latency_ms: float, budget_ms: float) -> Reward:
    """accuracy - 0.1 latency/budget - 2 overshoot/budget: the components sum to the total."""
    latency, violation = -0.1 * latency_ms / budget_ms, -2.0 * max(0.0, latency_ms - budget_ms) / budget_ms
    return Reward(total=accuracy + latency + violation, accuracy=accuracy, latency=latency, violation=violation,
                  efficiency=0.0, complexity=0.0)  # fmt: skip


class Meter(TrainingObserver):
    """Times the learner updates, counts stale drops, and times broadcasts once training is done."""

    def __init__(self) -> None:
        self.backend = None
        self.start = 0.0
        self.update_times: list[float] = []
        self.plans = self.stale = 0.0
        self.lags: list[float] = []
        self.broadcast_ms: list[float] = []
        self.state_bytes = 0

    def hook(self, backend) -> None:
        self.backend = backend

    def on_validation(self, event) -> None:
        if event.epoch == 0:
            self.start = time.perf_counter()  # the first rollout requests go out right after

    def on_batch(self, event) -> None:
        self.update_times.append(time.perf_counter())
        self.plans += event.metrics[ROLLOUT_NUM_PLANS]
        self.stale += event.metrics[ROLLOUT_NUM_STALE_DROPPED]
        if POLICY_LAG in event.metrics:
            self.lags.append(event.metrics[POLICY_LAG])

    def on_epoch_end(self, event) -> None:
        weights = self.backend.weights()
        state = ray.get(weights.state)
        self.state_bytes = sum(np.asarray(v).nbytes for v in state.values())
        for k in range(BROADCASTS):
            began = time.perf_counter()
            ref = ray.put(state)
            ray.get([actor.load_weights.remote(weights.version + k + 1, ref) for actor in self.backend.actors])
            self.broadcast_ms.append((time.perf_counter() - began) * 1000.0)


def load_profile(path: str | None, seed: int) -> tuple[tuple[float, float], ...]:
    if path is not None:
        from adactrl.profiling import read_profile

        return tuple((r.total_ms, r.accuracy) for r in read_profile(path))
    rng = np.random.default_rng(seed)
    latency = 60.0 * np.exp(0.35 * rng.standard_normal(2000))
    return tuple((float(ms), float(rng.random() < 0.6)) for ms in latency)


def run_count(args: argparse.Namespace, workers: int, worker_class: type, out: Path) -> dict:
    requests = args.requests_per_worker * workers
    config = TrainConfig(
        output_dir=str(out / f"workers_{workers}"), model_path=args.model_path,
        data=DataConfig(num_train_samples=requests * args.batch_size, num_val_samples=workers),
        num_epochs=1, batch_size=args.batch_size, group_size=args.group_size, num_workers=workers,
        budget_range_ms=args.budget_range_ms, num_val_budgets=1, oracle_samples=0, worker_cpus=0.1,
        learner_cpus=1.0, mlflow_tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
    )  # fmt: skip
    meter = Meter()
    run_training(config, observers=[meter], backend_hook=meter.hook, worker_class=worker_class)
    elapsed = meter.update_times[-1] - meter.start
    return {
        "workers": workers, "max_policy_lag": config.learner.max_policy_lag, "updates": len(meter.update_times),
        "updates_per_s": len(meter.update_times) / elapsed, "stale_fraction": meter.stale / meter.plans,
        "mean_policy_lag": statistics.fmean(meter.lags) if meter.lags else math.nan,
        "broadcast_ms_median": statistics.median(meter.broadcast_ms), "broadcast_ms_max": max(meter.broadcast_ms),
        "controller_state_bytes": meter.state_bytes,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=list(WORKER_COUNTS))
    p.add_argument("--requests_per_worker", type=int, default=16,
                   help="a run's first and last requests wait on the pipeline: more requests, closer to steady state")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--group_size", type=int, default=4)
    p.add_argument("--time_scale", type=float, default=1.0, help="multiplies every simulated plan latency")
    p.add_argument("--profile", default=None, help="an `adactrl profile` table (default: the synthetic profile)")
    p.add_argument("--model_path", default=None, help="the controller's size comes from this model (default: shipped)")
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args()

    profile = load_profile(args.profile, seed=0)
    latencies = sorted(ms for ms, _ in profile)
    args.budget_range_ms = (latencies[len(latencies) // 20], latencies[-len(latencies) // 20])
    sizes = load_model(args.model_path, None).knob_space.sizes
    worker_class = type("ProfiledRolloutWorker", (SimulatedRolloutWorker,),
                        {"profile": profile, "sizes": tuple(sizes), "time_scale": args.time_scale})  # fmt: skip
    start_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(0.1 * max(args.workers) + 1)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="adactrl-scaling-") as tmp:
        for workers in args.workers:
            rows.append(run_count(args, workers, worker_class, Path(tmp)))
            print(f"{workers} workers: {rows[-1]['updates_per_s']:.2f} updates/s", file=sys.stderr, flush=True)
    ray.shutdown()
    base = next((r["updates_per_s"] for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["efficiency"] = row["updates_per_s"] / (row["workers"] * base) if base else math.nan
    print(f"{'workers':>7} {'lag':>4} {'updates/s':>10} {'efficiency':>11} {'stale':>7} {'mean lag':>9} "
          f"{'broadcast ms (median, max)':>27}")  # fmt: skip
    for r in rows:
        print(f"{r['workers']:>7} {r['max_policy_lag']:>4} {r['updates_per_s']:>10.2f} {r['efficiency']:>11.1%} "
              f"{r['stale_fraction']:>7.1%} {r['mean_policy_lag']:>9.2f} "
              f"{r['broadcast_ms_median']:>17.1f}, {r['broadcast_ms_max']:>7.1f}")  # fmt: skip
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "settings": {k: v for k, v in vars(args).items() if k != "output"}, "targets": TARGETS, "rows": rows,
        "simulated_request_s": statistics.fmean(ms for ms, _ in profile) * args.batch_size * args.group_size
        * args.time_scale / 1000.0,
    }  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
