"""Latency breakdown of adaptive inference on the embedded model: per-component medians, the
coefficient of variation over repeated runs, how well the components add up to the measured
end-to-end time, and the controller's share of it. CUDA events on a GPU, perf_counter on a CPU.

    python benchmarks/latency.py --repeats 50 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from adactrl.controller import Controller, ControllerConfig
from adactrl.controller.adaptive import ControllerPolicy
from adactrl.data import load_vqa_dataset
from adactrl.executor import STAGES, StaticPolicy, execute
from adactrl.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--output", default="benchmarks/results/latency.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(device=args.device)
    controller = Controller(ControllerConfig(d_model=model.hidden_size), model.knob_space).to(args.device).eval()
    row = load_vqa_dataset("synthetic", "test", 1, 0)[0]
    space = model.knob_space
    variants = {
        "controller (greedy, untrained)": lambda: ControllerPolicy(
            controller, args.budget, greedy=True, token_norm=model.embedding_norm()
        ),
        "static full plan": lambda: StaticPolicy(space.full_plan(model.importance)),
        "static cheapest plan": lambda: StaticPolicy(
            space.plan(space.tiers[0], 1, space.top_k_values[0], space.num_blocks_values[0], model.importance)
        ),
    }
    report = {"device": str(args.device), "threads": args.threads, "repeats": args.repeats, "variants": {}}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for i in range(args.warmup + args.repeats):
        # Interleave the variants so drift on a shared machine hits them alike.
        for name, make_policy in variants.items():
            result = execute(model, row["image"], row["question"], make_policy(), device=args.device)
            if i >= args.warmup:
                runs[name].append(result.latency_ms)
    print(f"device {args.device}, {args.repeats} runs each (median ms, CV in brackets)")
    header = f"{'variant':32s} " + " ".join(f"{s:>16s}" for s in (*STAGES, "total")) + f" {'sum/total':>9s} {'ctrl%':>6s}"
    print(header)
    for name, samples in runs.items():
        row_stats = {}
        for stage in (*STAGES, "total"):
            values = [s[stage] for s in samples]
            median = statistics.median(values)
            cv = statistics.pstdev(values) / statistics.fmean(values) if statistics.fmean(values) > 0 else 0.0
            row_stats[stage] = {"median_ms": median, "cv": cv}
        ratios = [sum(s[k] for k in STAGES) / s["total"] for s in samples]
        shares = [s["controller"] / s["total"] for s in samples]
        row_stats["components_over_total"] = statistics.median(ratios)
        row_stats["controller_share"] = statistics.median(shares)
        report["variants"][name] = row_stats
        cells = " ".join(
            f"{row_stats[s]['median_ms']:9.3f} ({row_stats[s]['cv']:.2f})" for s in (*STAGES, "total")
        )
        print(f"{name:32s} {cells} {row_stats['components_over_total']:9.3f} {100 * row_stats['controller_share']:5.2f}%")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
