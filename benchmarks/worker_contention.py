"""How much do rollout workers on one machine slow each other's measured latency?

    python benchmarks/worker_contention.py                       # 1 and 2 workers, 3 rounds of 20 s
    python benchmarks/worker_contention.py --workers 1 2 4 --seconds 30 --clock wall

Training measures every plan's latency on its rollout workers; `adactrl evaluate`, `profile` and
`serve` measure one request at a time in one process. When several workers share a CPU's cores
(and its caches and memory bandwidth) each one measures slower plans than a lone process does, so
a controller trained there learns budgets of a busier machine than the one it is judged or served
on. This benchmark runs the same static plans over the same validation questions in N concurrent
Ray tasks (one CPU each, torch at 1 thread), for each N in --workers, in rounds that alternate the
order, and reports per N the median and p95 latency and their ratio to N = 1 measured in the same
round (mean ± standard error over rounds). `--clock thread` (the default) times the inference
thread's CPU time (`ADACTRL_CPU_CLOCK`, adactrl/timing.py), so only the interference itself is
counted, not the time a busy scheduler takes away.

Writes worker_contention.json under --output_dir and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANS = (("low", 1, 4, 12), ("high", 1, 4, 12), ("high", 1, 8, 16))
"""(tier, insertion, top_k, num_blocks): the cheapest plan, a middle one and the full plan."""


def measure(seconds: float, num_questions: int) -> dict[str, list[float]]:
    """Latencies (ms) of each plan in PLANS, cycling over the questions for `seconds`."""
    import torch

    torch.set_num_threads(1)
    from adactrl.data import load_vqa_dataset
    from adactrl.executor import StaticPolicy, execute
    from adactrl.models.embedded import EmbeddedVLM

    model = EmbeddedVLM.load(None)
    rows = list(load_vqa_dataset("synthetic", "validation", num_questions, 0))
    plans = {"/".join(map(str, p)): model.knob_space.plan(*p, model.importance) for p in PLANS}
    for plan in plans.values():  # warm-up
        for row in rows[:2]:
            execute(model, row["image"], row["question"], StaticPolicy(plan))
    latencies: dict[str, list[float]] = {name: [] for name in plans}
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        for row in rows:
            for name, plan in plans.items():
                latencies[name].append(execute(model, row["image"], row["question"], StaticPolicy(plan)).total_ms)
    return latencies


def p95(values: list[float]) -> float:
    """The p95 as budget calibration and the oracle's profile take it."""
    from adactrl.training.records import CALIBRATION_QUANTILE, nearest_rank

    return nearest_rank(values, CALIBRATION_QUANTILE)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="concurrent workers to compare")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0, help="measuring time of each worker per round")
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--clock", choices=("wall", "thread"), default="thread")
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    if 1 not in args.workers or any(n < 1 for n in args.workers):
        p.error("--workers must be >= 1 and include 1 (the reference)")
    os.environ["ADACTRL_CPU_CLOCK"] = args.clock  # the Ray tasks inherit it
    import ray

    ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level="WARNING")
    task = ray.remote(num_cpus=1)(measure)
    rounds = []
    for r in range(args.rounds):
        order = args.workers if r % 2 == 0 else list(reversed(args.workers))
        result = {}
        for n in order:
            runs = ray.get([task.remote(args.seconds, args.questions) for _ in range(n)])
            result[n] = {plan: [ms for run in runs for ms in run[plan]] for plan in runs[0]}
        rounds.append(result)
    ray.shutdown()

    rows = []
    for n in args.workers:
        for plan in rounds[0][n]:
            med = [statistics.median(r[n][plan]) / statistics.median(r[1][plan]) for r in rounds]
            tail = [p95(r[n][plan]) / p95(r[1][plan]) for r in rounds]
            rows.append({
                "workers": n, "plan": plan,
                "median_ms": statistics.fmean(statistics.median(r[n][plan]) for r in rounds),
                "p95_ms": statistics.fmean(p95(r[n][plan]) for r in rounds),
                "median_ratio": statistics.fmean(med), "median_ratio_se": _se(med),
                "p95_ratio": statistics.fmean(tail), "p95_ratio_se": _se(tail),
                "runs": sum(len(r[n][plan]) for r in rounds),
            })  # fmt: skip
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows,
              "cpus": os.cpu_count(), "load_average": os.getloadavg()}  # fmt: skip
    (out / "worker_contention.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.clock} clock, {args.rounds} rounds of {args.seconds:.0f} s per worker, {os.cpu_count()} CPUs")
    print("| workers | plan | median ms | p95 ms | median / 1 worker | p95 / 1 worker | runs |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['plan']} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | "
              f"x{row['median_ratio']:.3f} ± {row['median_ratio_se']:.3f} | x{row['p95_ratio']:.3f} ± "
              f"{row['p95_ratio_se']:.3f} | {row['runs']} |")  # fmt: skip
    return 0


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
