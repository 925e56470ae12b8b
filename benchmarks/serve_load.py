"""Loopback load test of `adactrl serve`: one CPU replica of the shipped model, offered 1x, 2x and
4x its measured capacity at one fixed budget, in one run. Bounded: a fixed number of requests per
load (rate x duration, Poisson arrivals from a fixed seed), each with a client timeout.

    python benchmarks/serve_load.py [--controller CKPT] [--budget_ms 150] [--duration_s 10]

Capacity is the replica's saturated throughput: `--capacity_requests` requests from two
closed-loop clients at the same budget (one is always waiting, so the replica never idles).
Each load then reports, over the requests sent: throughput (answers per second), latency
p50/p95/p99 of the answers as the client saw them (from the scheduled send time), the
violation rate (answers whose end-to-end time at the server exceeded the budget, over the
answers), the 429 rate and the requests lost (no HTTP response at all). Prints a table, writes
JSON. Without --controller an untrained controller is served (knob choices close to uniform).
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
PROMPT = "what color is the big triangle ?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controller", default=None, help="checkpoint to serve (default: an untrained controller)")
    parser.add_argument("--budget_ms", type=float, default=150.0)
    parser.add_argument("--loads", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="multiples of capacity")
    parser.add_argument("--duration_s", type=float, default=10.0, help="seconds of arrivals per load")
    parser.add_argument("--capacity_requests", type=int, default=40)
    parser.add_argument("--timeout_s", type=float, default=30.0, help="client timeout per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/serve_load.json")
    args = parser.parse_args()

    import ray
    from ray import serve

    from adactrl.orchestration.ray_backend import start_ray
    from adactrl.orchestration.serve import start_app
    from adactrl.serving.config import ServeConfig

    with tempfile.TemporaryDirectory() as tmp:
        controller = args.controller or untrained_checkpoint(Path(tmp) / "untrained.pt")
        start_ray(num_cpus=2)
        try:
            url = start_app(ServeConfig(controller=controller, port=free_port(), replica_cpus=1, num_threads=1))
            health = requests.get(f"{url}/health", timeout=30).json()
            body = {"image": base64.b64encode((REPO / "examples" / "color.png").read_bytes()).decode(),
                    "prompt": PROMPT, "budget_ms": args.budget_ms}  # fmt: skip
            capacity = measure_capacity(url, body, args.capacity_requests, args.timeout_s)
            rows = [offer(url, body, m * capacity, m, args) for m in args.loads]
        finally:
            serve.shutdown()
            ray.shutdown()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "command": "python " + " ".join(sys.argv), "controller": args.controller or "untrained (seed 0)",
        "budget_ms": args.budget_ms, "cheapest_ms": health["cheapest_ms"], "capacity_rps": capacity,
        "duration_s": args.duration_s, "rows": rows,
    }  # fmt: skip
    print(format_table(report))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


def untrained_checkpoint(path: Path) -> str:
    from adactrl.controller import Controller, ControllerConfig, save_controller
    from adactrl.models import load_model

    model = load_model()
    save_controller(path, Controller(ControllerConfig(d_model=model.hidden_size, seed=0), model.knob_space))
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def send(url: str, body: dict, timeout_s: float) -> dict:
    """One request -> {"status", "client_ms", "server": the JSON body}; status 0 when no response came."""
    start = time.perf_counter()
    try:
        response = requests.post(f"{url}/v1/infer", json=body, timeout=timeout_s)
        return {"status": response.status_code, "client_ms": (time.perf_counter() - start) * 1000, "server": response.json()}
    except requests.RequestException as err:
        return {"status": 0, "client_ms": (time.perf_counter() - start) * 1000, "server": {"error": str(err)}}


def measure_capacity(url: str, body: dict, n: int, timeout_s: float) -> float:
    """Answers per second of one saturated replica: n requests from two closed-loop clients."""
    counter = iter(range(n))
    lock, served = threading.Lock(), []

    def client() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            result = send(url, body, timeout_s)
            with lock:
                served.append(result["status"] == 200)
    for result in [send(url, body, timeout_s) for _ in range(3)]:  # warm the path
        assert result["status"] in (200, 429), result
    start = time.perf_counter()
    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    return sum(served) / (time.perf_counter() - start)


def offer(url: str, body: dict, rate: float, multiple: float, args: argparse.Namespace) -> dict:
    """Open loop: Poisson arrivals at `rate` for duration_s; every request is sent at its time."""
    rng = np.random.default_rng([args.seed, int(multiple * 100)])
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * args.duration_s * 2)))
    arrivals = arrivals[arrivals < args.duration_s]
    start = time.perf_counter() + 0.5

    def scheduled(at: float) -> dict:
        time.sleep(max(0.0, start + at - time.perf_counter()))
        result = send(url, body, args.timeout_s)
        result["client_ms"] = (time.perf_counter() - start - at) * 1000  # from the scheduled send time
        return result

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(scheduled, arrivals))
    elapsed = time.perf_counter() - start
    return summarize(results, multiple, rate, elapsed)


def summarize(results: list[dict], multiple: float, rate: float, elapsed: float) -> dict:
    answered = [r for r in results if r["status"] == 200]
    latency = sorted(r["client_ms"] for r in answered)
    missed = sum(not r["server"]["met_budget"] for r in answered)
    over_client = sum(r["client_ms"] > r["server"]["budget_ms"] for r in answered)

    def q(p: float) -> float:
        return latency[min(len(latency) - 1, int(p * len(latency)))] if latency else float("nan")

    statuses = [r["status"] for r in results]
    return {
        "load": multiple, "offered_rps": rate, "sent": len(results), "answered": len(answered),
        "rejected_429": statuses.count(429), "lost": statuses.count(0),
        "other_status": sum(s not in (0, 200, 429) for s in statuses),
        "throughput_rps": len(answered) / elapsed, "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
        "violation_rate": missed / len(answered) if answered else float("nan"),
        "client_violation_rate": over_client / len(answered) if answered else float("nan"),
        "rate_429": statuses.count(429) / len(results),
        "cheapest_plan_share": statistics.fmean(r["server"]["plan"] == "cheapest" for r in answered) if answered else 0.0,
        **{f"mean_{key}_ms": statistics.fmean(r["server"]["latency_ms"][key] for r in answered) if answered else 0.0
           for key in ("queue", "model", "total")},
        "missed_by_plan": {plan: sum(r["server"]["plan"] == plan and not r["server"]["met_budget"] for r in answered)
                           for plan in ("controller", "cheapest")},
    }  # fmt: skip


def format_table(report: dict) -> str:
    lines = [f"budget {report['budget_ms']:g} ms, cheapest plan p95 {report['cheapest_ms']:.1f} ms, "
             f"capacity {report['capacity_rps']:.1f} req/s (one CPU replica), {report['duration_s']:g} s per load",
             f"{'load':>4} {'offered/s':>9} {'sent':>5} {'answered':>8} {'429':>5} {'lost':>4} {'thru/s':>7} "
             f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'viol':>6} {'429 rate':>8}"]  # fmt: skip
    lines.append("-" * len(lines[-1]))
    for r in report["rows"]:
        lines.append(f"{r['load']:>3g}x {r['offered_rps']:>9.1f} {r['sent']:>5} {r['answered']:>8} {r['rejected_429']:>5} "
                     f"{r['lost']:>4} {r['throughput_rps']:>7.1f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} "
                     f"{r['p99_ms']:>7.1f} {r['violation_rate']:>6.1%} {r['rate_429']:>8.1%}")  # fmt: skip
    return "\n".join(lines)


def machine() -> str:
    import os

    return f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}, load average {os.getloadavg()[0]:.2f}"


if __name__ == "__main__":
    main()
