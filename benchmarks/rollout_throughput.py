"""Rollout throughput of the Ray training system, shared-stage rollouts against one run per plan,
side by side: plan executions per second per worker in each mode, the composed latency's error
against an end-to-end measurement of the same plan, learner update time and weight-broadcast
time. Prints a table and writes benchmarks/results/rollout_throughput.json.

    python benchmarks/rollout_throughput.py                       # 2 CPU workers, embedded model, untrained
    python benchmarks/rollout_throughput.py --controller outputs/train/best_model.pt   # a trained policy
    ADACTRL_CPU_CLOCK=thread python benchmarks/rollout_throughput.py --num_workers 1

Every worker gets the same requests in each mode (same samples, budgets and seeds; each plan
has its own seed, so both modes run the same plans), in passes per request: per_plan, shared,
per_plan again. A mode's rate on a worker is its plans over the worker's time on its requests;
the speed-up is the shared rate over the mean of the two per-plan rates of the same request,
averaged over (worker, request) pairs with its standard error. The composition error is each
plan's composed total (shared pass) against its end-to-end total (first per-plan pass); the
second per-plan pass against the first is the noise floor: two measurements of one plan.
The weight broadcast is timed from `ray.put` of the learner's state until every worker has it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adactrl.controller import Controller, ControllerConfig, load_controller  # noqa: E402
from adactrl.orchestration.ray_backend import ray_backend  # noqa: E402
from adactrl.timing import CPU_CLOCK_ENV  # noqa: E402
from adactrl.training.config import DataConfig, TrainConfig, WorkerConfig  # noqa: E402
from adactrl.training.loop import request_seed  # noqa: E402
from adactrl.training.records import BudgetRange, RolloutBatch, RolloutRequest, WeightsRef  # noqa: E402
from learner import Learner  # noqa: E402
from rollout_workers import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rollout_throughput.json"
PASSES = ("per_plan", "shared", "per_plan_again")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--requests", type=int, default=3, help="timed rollout requests per worker (each in every pass)")
    p.add_argument("--batch_size", type=int, default=TrainConfig.batch_size, help="samples per request")
    p.add_argument("--group_size", type=int, default=TrainConfig.group_size)
    p.add_argument("--budgets_per_sample", type=int, default=TrainConfig.budgets_per_sample)
    p.add_argument("--controller", default=None, help="a trained controller checkpoint (best_model.pt) and its "
                                                      "budget range; default: an untrained controller, seed 0")
    p.add_argument("--budget_range_ms", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="a fixed budget range (default: the controller's, else calibrated on the workers)")
    p.add_argument("--broadcasts", type=int, default=5)
    p.add_argument("--model_path", default=None)
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args()

    n_train = args.batch_size * args.num_workers * (args.requests + 1)
    config = TrainConfig(num_workers=args.num_workers, model_path=args.model_path,
                         data=DataConfig(num_train_samples=n_train, num_val_samples=1))  # fmt: skip
    model = load_model(args.model_path, None)
    budget = None if args.budget_range_ms is None else BudgetRange(*args.budget_range_ms)
    if args.controller:
        controller, extra = load_controller(args.controller, expected_knob_space=model.knob_space,
                                            expected_d_model=model.hidden_size)  # fmt: skip
        budget = budget or BudgetRange(**extra["budget_range"])
        controller.set_budget_range(budget.low_ms, budget.high_ms)
    else:
        controller = Controller(ControllerConfig(d_model=model.hidden_size, seed=0), model.knob_space)
    learner = Learner(controller, config.learner)
    worker_config = WorkerConfig(controller=controller.config, data=config.data, reward=config.reward,
                                 model_path=args.model_path)  # fmt: skip
    with ray_backend(config, worker_config, controller, None) as backend:
        if budget is None:
            budget = BudgetRange.calibrate(backend.calibrate(tuple(range(4))), config.budget_margin)
        backend.set_budget_range(budget.low_ms, budget.high_ms)
        weights = backend.weights()
        ray.get([a.load_weights.remote(weights.version, weights.state) for a in backend.actors])

        def request(worker: int, k: int, mode: str) -> RolloutRequest:
            seed = request_seed(0, worker, k)
            first = (k * args.num_workers + worker) * args.batch_size
            chunk = range(first, first + args.batch_size)
            indices = tuple(i for i in chunk for _ in range(args.budgets_per_sample))
            budgets = budget.sample(np.random.default_rng(seed), len(indices))
            return RolloutRequest(0, k, indices, budgets, args.group_size, weights.version, seed,
                                  rollout_mode="shared" if mode == "shared" else "per_plan")  # fmt: skip

        def run_pass(k: int, mode: str) -> list[RolloutBatch]:
            return ray.get([a.rollout.remote(request(w, k, mode)) for w, a in enumerate(backend.actors)])

        for mode in PASSES[:2]:  # warm-up, and the shared mode's overhead measurement
            run_pass(args.requests, mode)
        began = time.perf_counter()
        passes = {mode: [] for mode in PASSES}
        for k in range(args.requests):
            for mode in PASSES:
                passes[mode].extend(run_pass(k, mode))
        wall_s = time.perf_counter() - began

        update_ms = []
        for batch in passes["per_plan"]:
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

    state_bytes = sum(t.numel() * t.element_size() for t in controller.state_dict().values())
    result = {
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_clock": os.environ.get(CPU_CLOCK_ENV, "wall"), "load_average": os.getloadavg(),
        "model_path": args.model_path or "embedded (shipped)", "controller": args.controller or "untrained (seed 0)",
        "num_workers": args.num_workers, "batch_size": args.batch_size, "group_size": args.group_size,
        "budgets_per_sample": args.budgets_per_sample, "requests_per_worker": args.requests,
        "budget_range_ms": budget.to_dict(), "wall_s": wall_s,
        **compare(passes, args.num_workers),
        "learner_update_ms": {"median": statistics.median(update_ms), "max": max(update_ms)},
        "weights_put_ms": {"median": statistics.median(put_ms)},
        "weight_broadcast_ms": {"median": statistics.median(broadcast_ms), "max": max(broadcast_ms)},
        "controller_state_bytes": state_bytes,
    }  # fmt: skip
    print_table(result)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def compare(passes: dict[str, list[RolloutBatch]], num_workers: int) -> dict:
    """Throughput per mode and worker, the speed-up per (worker, request) with its standard error,
    the composed latency's relative error and the noise floor, and how much the plans repeat."""
    per_worker = {mode: {w: _rate([b for b in batches if b.worker_index == w]) for w in range(num_workers)}
                  for mode, batches in passes.items()}  # fmt: skip
    ratios = [shared.plans_per_s / statistics.fmean([a.plans_per_s, b.plans_per_s])
              for a, shared, b in zip(passes["per_plan"], passes["shared"], passes["per_plan_again"])]  # fmt: skip
    first, shared, again = (_totals(passes[mode]) for mode in PASSES)
    if set(first) != set(shared):
        raise RuntimeError("the two modes ran different plans for the same seeds")
    composed = [(shared[key] - first[key]) / first[key] for key in first]
    floor = [(again[key] - first[key]) / first[key] for key in first]
    groups = Counter()
    for batch in passes["shared"]:
        for key in {(r.sample_id, r.budget_ms) for r in batch.records}:
            actions = [r.actions for r in batch.records if (r.sample_id, r.budget_ms) == key]
            groups["tiers"] += len({a[0] for a in actions})
            groups["plans"] += len(set(actions))
            groups["groups"] += 1
    return {
        "plans_per_s_per_worker": per_worker,
        "speedup_shared_over_per_plan": {"mean": statistics.fmean(ratios), "stderr": _stderr(ratios),
                                         "n": len(ratios), "each": ratios},
        "composition_error": _error_summary(composed),
        "noise_floor": _error_summary(floor),
        "distinct_per_group": {"tiers": groups["tiers"] / groups["groups"],
                               "plans": groups["plans"] / groups["groups"]},
    }  # fmt: skip


def _totals(batches: list[RolloutBatch]) -> dict[tuple, float]:
    """Each plan's total latency by (worker, request, sample, budget, position in its group, actions)."""
    totals, seen = {}, Counter()
    for batch in batches:
        for record in batch.records:
            group = (batch.worker_index, batch.request_id, record.sample_id, record.budget_ms)
            totals[(*group, seen[group], record.actions)] = record.total_ms
            seen[group] += 1
    return totals


def _rate(batches: list[RolloutBatch]) -> float:
    return sum(len(b.records) for b in batches) / sum(b.rollout_s for b in batches)


def _stderr(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def _error_summary(relative: list[float]) -> dict[str, float]:
    absolute = sorted(abs(e) for e in relative)
    return {"median_abs_pct": 100 * statistics.median(absolute),
            "p95_abs_pct": 100 * absolute[min(len(absolute) - 1, int(0.95 * len(absolute)))],
            "median_signed_pct": 100 * statistics.median(relative), "n": len(relative)}  # fmt: skip


def print_table(result: dict) -> None:
    rates, speedup = result["plans_per_s_per_worker"], result["speedup_shared_over_per_plan"]
    print(f"{result['device']}, {result['num_workers']} workers, clock {result['cpu_clock']}, "
          f"load {result['load_average'][0]:.1f}, controller {result['controller']}")  # fmt: skip
    print(f"{'metric':<48}{'value':>16}")
    for mode in PASSES:
        for w, rate in rates[mode].items():
            print(f"{f'plan executions / s, worker {w}, {mode}':<48}{rate:>16.1f}")
    print(f"{'speed-up shared / per_plan (mean ± s.e.)':<48}{speedup['mean']:>9.3f} ± {speedup['stderr']:.3f}")
    for name in ("composition_error", "noise_floor"):
        e = result[name]
        print(f"{f'{name}: median |err| %, p95 %':<48}{e['median_abs_pct']:>9.2f}, {e['p95_abs_pct']:.2f}")
    distinct = result["distinct_per_group"]
    print(f"{'distinct tiers, plans per group of ' + str(result['group_size']):<48}"
          f"{distinct['tiers']:>9.2f}, {distinct['plans']:.2f}")  # fmt: skip
    print(f"{'learner update, median ms':<48}{result['learner_update_ms']['median']:>16.2f}")
    print(f"{'weights ray.put, median ms':<48}{result['weights_put_ms']['median']:>16.2f}")
    print(f"{'weight broadcast to all workers, median ms':<48}{result['weight_broadcast_ms']['median']:>16.2f}")
    print(f"{'controller state, KiB':<48}{result['controller_state_bytes'] / 1024:>16.1f}")


if __name__ == "__main__":
    sys.exit(main())
