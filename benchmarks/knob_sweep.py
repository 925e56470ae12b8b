"""Static sweep of every plan (tier x top_k x num_blocks) of the embedded model on held-out
synthetic questions: a per-plan table, the Pareto frontier, and the acceptance checks of the
embedded-model issue, written as JSON.

    python benchmarks/knob_sweep.py --num_questions 500        # about 20 minutes on 2 cores

The single-knob accuracy checks also read test questions past the sweep's, up to
`--check_questions` (4,000), at the full plan and each knob's lowest value only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from adactrl.data import load_vqa_dataset
from adactrl.models import load_model
from adactrl.models.adapter import MoEVLM
from adactrl.models.pretrain import REASONING_FAMILIES, RECALL_FAMILIES
from adactrl.plots import plot_pareto
from adactrl.profiling import PlanSummary, SweepRecord, paired_drop, pareto_frontier, summarize, sweep

# Which families each knob should hurt when lowered alone. Top-k and the block count both take
# expert work away (half the experts of every block the plan reaches, or every expert of the
# dropped blocks), so both read the same families: those whose answers need per-token work after
# the read (the reasoning families) and the stored facts the experts hold (the recall families).
EXPERT_FAMILIES = REASONING_FAMILIES + RECALL_FAMILIES
KNOB_FAMILIES = {"tier": ("digit", "parity"), "top_k": EXPERT_FAMILIES, "num_blocks": EXPERT_FAMILIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_questions", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model_path", default=None)
    parser.add_argument(
        "--check_questions",
        type=int,
        default=4000,
        help="test questions the single-knob accuracy checks read (the sweep's own plus more, "
        "run at the full plan and each knob's lowest value only); 0 = the sweep's questions only",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/knob_sweep.json")
    args = parser.parse_args()
    if args.check_questions and args.check_questions < args.num_questions:
        parser.error(
            f"--check_questions {args.check_questions} is below --num_questions {args.num_questions}; "
            "raise it, or pass 0 to check on the sweep's questions only"
        )
    torch.set_num_threads(args.threads)

    model = load_model(args.model_path)
    rows = list(load_vqa_dataset("synthetic", "test", args.num_questions, args.seed))
    plans = model.knob_space.static_plans(model.importance)
    started = time.perf_counter()
    with tqdm(total=len(rows) * len(plans), desc="sweep", unit="run") as bar:
        records = sweep(model, rows, plans, progress=bar.update)
    elapsed = time.perf_counter() - started
    summaries = summarize(records)
    frontier = pareto_frontier(summaries)
    by_knobs = {(s.knobs.tier, s.knobs.top_k, s.knobs.num_blocks): s for s in summaries}
    space = model.knob_space
    full = by_knobs[(space.tiers[-1], space.default_top_k, space.num_layers)]
    cheapest = by_knobs[(space.tiers[0], space.top_k_values[0], space.num_blocks_values[0])]
    single_knob = {
        "tier": [by_knobs[(t, full.knobs.top_k, full.knobs.num_blocks)] for t in space.tiers[:-1]],
        "top_k": [by_knobs[(full.knobs.tier, k, full.knobs.num_blocks)] for k in space.top_k_values[:-1]],
        "num_blocks": [by_knobs[(full.knobs.tier, full.knobs.top_k, n)] for n in space.num_blocks_values[:-1]],
    }
    full_runs = [r.latency_ms for r in records if r.plan == full.plan]
    lowest = {knob: lowered[0].plan for knob, lowered in single_knob.items()}
    more = []
    if args.check_questions > args.num_questions:
        more = list(load_vqa_dataset("synthetic", "test", args.check_questions, args.seed))[args.num_questions :]
    check_records = records + more_check_records(model, plans, full.plan, lowest, more)
    checks = acceptance(full, cheapest, single_knob, frontier, statistics.median(full_runs), check_records)

    print_table(summaries, {s.plan for s in frontier})
    print(f"\n{len(records)} runs in {elapsed / 60:.1f} min; Pareto frontier: {len(frontier)} plans")
    print("single-knob effects (vs the full plan):")
    for knob, lowered in single_knob.items():
        for s in lowered:
            fams = {f: round(s.family_accuracy[f] - full.family_accuracy[f], 3) for f in KNOB_FAMILIES[knob]}
            print(
                f"  {s.plan:22s} latency x{s.latency_ms / full.latency_ms:.2f}  "
                f"accuracy {s.accuracy - full.accuracy:+.3f}  family deltas {fams}"
            )
    print("acceptance:")
    for name, (ok, detail) in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_pareto(summaries, output.with_suffix(".png"))
    output.write_text(
        json.dumps(
            {
                "num_questions": len(rows),
                "check_questions": max(args.check_questions, len(rows)),
                "seed": args.seed,
                "threads": args.threads,
                "machine": platform.processor() or platform.machine(),
                "elapsed_s": elapsed,
                "plans": [asdict(s) | {"pareto": s in frontier} for s in summaries],
                "checks": {k: {"pass": ok, "detail": d} for k, (ok, d) in checks.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {output} and {output.with_suffix('.png')}")


def more_check_records(
    model: MoEVLM, plans: list, full_plan: str, lowest: dict[str, str], rows: list[dict]
) -> list[SweepRecord]:
    """The single-knob checks on the test questions past the sweep's own (`--check_questions`):
    a knob's cost on its families can be a few points, which the sweep's 500 questions (about
    55 per family) cannot tell from noise. Only the full plan and each knob's lowest value
    (`lowest`, knob -> plan name) run, each on the families it is checked on."""
    if not rows:
        return []
    runs = {full_plan: set().union(*KNOB_FAMILIES.values())}
    for knob, plan in lowest.items():
        runs.setdefault(plan, set()).update(KNOB_FAMILIES[knob])
    by_name = {p.name: p for p in plans}
    records: list[SweepRecord] = []
    started = time.perf_counter()
    for name, families in runs.items():
        chosen = [r for r in rows if r["family"] in families]
        if not chosen:
            continue
        with tqdm(total=len(chosen), desc=f"check {name}", unit="run") as bar:
            records += sweep(model, chosen, [by_name[name]], progress=bar.update)
    print(f"single-knob checks: {len(records)} more runs on {len(rows)} more test questions "
          f"in {(time.perf_counter() - started) / 60:.1f} min")
    return records


def acceptance(
    full: PlanSummary,
    cheapest: PlanSummary,
    single_knob: dict[str, list[PlanSummary]],
    frontier: list[PlanSummary],
    full_median_ms: float,
    records: list[SweepRecord],
) -> dict[str, tuple[bool, str]]:
    checks = {
        "full plan accuracy >= 0.75": (full.accuracy >= 0.75, f"{full.accuracy:.3f}"),
        "cheapest plan >= 0.15 below full": (
            full.accuracy - cheapest.accuracy >= 0.15,
            f"{cheapest.accuracy:.3f} vs {full.accuracy:.3f}",
        ),
        "cheapest plan <= half the full latency": (
            cheapest.latency_ms <= 0.5 * full.latency_ms,
            f"{cheapest.latency_ms:.1f} ms vs {full.latency_ms:.1f} ms (x{cheapest.latency_ms / full.latency_ms:.2f})",
        ),
        "Pareto frontier >= 6 points": (len(frontier) >= 6, f"{len(frontier)} points"),
        "full plan 10-300 ms": (10 <= full_median_ms <= 300, f"median {full_median_ms:.1f} ms"),
    }
    for knob, lowered in single_knob.items():
        lowest = lowered[0]
        # Paired over the same questions; a drop within two standard errors (one or two
        # answers changing) is noise, not an effect of the knob.
        family_drop, se, n = paired_drop(records, full.plan, lowest.plan, KNOB_FAMILIES[knob])
        checks[f"lowering {knob} alone lowers latency"] = (
            lowest.latency_ms < full.latency_ms,
            f"{lowest.latency_ms:.1f} vs {full.latency_ms:.1f} ms",
        )
        checks[f"lowering {knob} alone lowers accuracy on {'/'.join(KNOB_FAMILIES[knob])}"] = (
            family_drop > 2 * se,
            f"mean drop {family_drop:+.3f} over {n} questions (paired s.e. {se:.3f}; needs > 2 s.e.)",
        )
    return checks


def print_table(summaries: list[PlanSummary], frontier: set[str]) -> None:
    families = sorted(summaries[0].family_accuracy)
    header = f"{'plan':22s} {'lat_ms':>7s} {'p95':>7s} {'acc':>6s} " + " ".join(f"{f[:6]:>6s}" for f in families)
    print(header)
    for s in summaries:
        fam = " ".join(f"{s.family_accuracy[f]:6.3f}" for f in families)
        mark = " *" if s.plan in frontier else ""
        print(f"{s.plan:22s} {s.latency_ms:7.1f} {s.p95_latency_ms:7.1f} {s.accuracy:6.3f} {fam}{mark}")


if __name__ == "__main__":
    main()
