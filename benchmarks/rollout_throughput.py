"""Rollout throughput of the Ray training system: plan executions per second per worker, learner
update time and weight-broadcast time. Prints a table and writes benchmarks/results/rollout_throughput.json.

    python benchmarks/rollout_throughput.py                       # 2 CPU workers, embedded model
    python benchmarks/rollout_throughput.py --num_workers 4 --requests 6

Every worker runs `--requests` rollout requests of `--batch_size` samples x `--group_size` plans
at once (after one warm-up request each), so the per-worker rate is measured under the same
contention as in training. The weight broadcast is timed from `ray.put` of the learner's state
until every worker has loaded it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adactrl.controller import Controller, ControllerConfig  # noqa: E402
from adactrl.training.config import DataConfig, TrainConfig, WorkerConfig  # noqa: E402
from adactrl.orchestration.ray_backend import ray_backend  # noqa: E402
from adactrl.training.loop import request_seed  # noqa: E402
from adactrl.training.records import BudgetRange, RolloutRequest, WeightsRef  # noqa: E402
from learner import Learner  # noqa: E402
from rollout_workers import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rollout_throughput.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--requests", type=int, default=3, help="timed rollout requests per worker")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--group_size", type=int, default=4)
    p.add_argument("--broadcasts", type=int, default=5)
    p.add_argument("--model_path", default=None)
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args()

    n_train = args.batch_size * (args.requests + 1)
    config = TrainConfig(num_workers=args.num_workers, model_path=args.model_path,
                         data=DataConfig(num_train_samples=n_train, num_val_samples=1))  # fmt: skip
    model = load_model(args.model_path, None)
    controller = Controller(ControllerConfig(d_model=model.hidden_size, seed=0), model.knob_space)
    learner = Learner(controller, config.learner)
    worker_config = WorkerConfig(controller=controller.config, data=config.data, reward=config.reward,
                                 model_path=args.model_path)  # fmt: skip
    with ray_backend(config, worker_config, controller, None) as backend:
        weights = backend.weights()
        ray.get([a.load_weights.remote(weights.version, weights.state) for a in backend.actors])
        budget = BudgetRange.calibrate(backend.calibrate(tuple(range(4))), config.budget_margin)

        def request(worker: int, k: int) -> RolloutRequest:
            seed = request_seed(0, worker, k)
            indices = tuple(range(k * args.batch_size, (k + 1) * args.batch_size))
            budgets = budget.sample(np.random.default_rng(seed), len(indices))
            return RolloutRequest(0, k, indices, budgets, args.group_size, weights.version, seed)

        # The batches come to this process here (the training driver never does that): the learner
        # update is timed on them below, in this process.
        ray.get([a.rollout.remote(request(w, args.requests)) for w, a in enumerate(backend.actors)])
        began = time.perf_counter()
        batches = ray.get([a.rollout.remote(request(w, k)) for k in range(args.requests)
                           for w, a in enumerate(backend.actors)])  # fmt: skip
        wall_s = time.perf_counter() - began

        update_ms = []
        for batch in batches:
            t = time.perf_counter()
            learner.update(batch)
            update_ms.append((time.perf_counter() - t) * 1000)

        broadcast_ms, put_ms = [], []
        for _ in range(args.broadcasts):
            state = learner.weights()
            t = time.perf_counter()
            published = WeightsRef(state.version + len(put_ms) + 1, ray.put(state.state))
            put_ms.append((time.perf_counter() - t) * 1000)
            ray.get([a.load_weights.remote(published.version, published.state) for a in backend.actors])
            broadcast_ms.append((time.perf_counter() - t) * 1000)

    per_worker = {}
    for w in range(args.num_workers):
        mine = [b for b in batches if b.worker_index == w]
        plans = sum(len(b.records) for b in mine)
        per_worker[w] = plans / sum(b.rollout_s for b in mine)
    total_plans = sum(len(b.records) for b in batches)
    state_bytes = sum(t.numel() * t.element_size() for t in controller.state_dict().values())
    result = {
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "num_workers": args.num_workers, "batch_size": args.batch_size, "group_size": args.group_size,
        "requests_per_worker": args.requests, "budget_range_ms": budget.to_dict(),
        "plans_per_s_per_worker": per_worker,
        "plans_per_s_total": total_plans / wall_s,
        "learner_update_ms": {"median": statistics.median(update_ms), "max": max(update_ms)},
        "weights_put_ms": {"median": statistics.median(put_ms)},
        "weight_broadcast_ms": {"median": statistics.median(broadcast_ms), "max": max(broadcast_ms)},
        "controller_state_bytes": state_bytes,
    }  # fmt: skip
    print(f"{'metric':<42}{'value':>14}")
    for w, rate in per_worker.items():
        print(f"{f'plan executions / s, worker {w}':<42}{rate:>14.1f}")
    print(f"{'plan executions / s, all workers (wall)':<42}{result['plans_per_s_total']:>14.1f}")
    print(f"{'learner update, median ms':<42}{result['learner_update_ms']['median']:>14.2f}")
    print(f"{'weights ray.put, median ms':<42}{result['weights_put_ms']['median']:>14.2f}")
    print(f"{'weight broadcast to all workers, median ms':<42}{result['weight_broadcast_ms']['median']:>14.2f}")
    print(f"{'controller state, KiB':<42}{state_bytes / 1024:>14.1f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
