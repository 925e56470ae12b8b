"""`adactrl profile`: the static sweep of the knob grid with measured latency."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adactrl.devices import device_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="static sweep of every plan: accuracy/latency table and Pareto plot")
    p.add_argument("--model_path", default=None, help="model directory, embedded or MolmoE-1B (default: the shipped one)")
    p.add_argument("--dataset_name", default="synthetic")
    p.add_argument("--data_dir", default=None, help="folder of the real datasets (docs/datasets.md)")
    p.add_argument("--split", default="test")
    p.add_argument("--num_samples", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/profile")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--num_threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); `adactrl train` measures with 1 per worker")
    p.add_argument("--all_insertions", action="store_true",
                   help="sweep every insertion point (5x the plans) instead of the first only")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summaries, output = profile(args)
    best = max(summaries, key=lambda s: s.accuracy)
    print(f"{len(summaries)} plans x {args.num_samples} samples -> {output}")
    print(f"best plan {best.plan}: accuracy {best.accuracy:.3f} at {best.latency_ms:.1f} ms")
    print(f"baselines and latency estimator from this table: adactrl baselines --profile {output}")
    return 0


def profile(args: argparse.Namespace):
    import torch

    from adactrl.data import load_vqa_dataset, read_rows
    from adactrl.models import load_model

    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num_threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model_path, device=args.device)
    rows, skipped = read_rows(load_vqa_dataset(args.dataset_name, args.split, args.num_samples, args.seed,
                                               data_dir=args.data_dir))  # fmt: skip
    if skipped:
        print(f"skipped {len(skipped)} rows whose image does not decode, e.g. {skipped[0]}")
    space = model.knob_space
    at = space.insertion_positions if args.all_insertions else space.insertion_positions[:1]
    plans = [plan for insertion in at for plan in space.static_plans(model.importance, insertion)]
    if args.all_insertions:  # at the default top-k every insertion point runs the same plan: keep one
        plans = [p for p in plans if p.top_k != space.default_top_k or p.insertion == at[0]]
    _, summaries = sweep_and_write(model, rows, args.output_dir, device=args.device, plans=plans)
    return summaries, Path(args.output_dir)


def sweep_and_write(model, rows, output_dir, *, device: str = "cpu", plans=None, max_new_tokens: int = 4):
    """Sweep `plans` (every static plan by default) over `rows` and write profile.parquet,
    summary.json and pareto.png to `output_dir` -> (records, per-plan summaries)."""
    from tqdm import tqdm

    from adactrl.plots import plot_pareto
    from adactrl.profiling import pareto_frontier, summarize, sweep, write_profile

    plans = model.knob_space.static_plans(model.importance) if plans is None else plans
    with tqdm(total=len(rows) * len(plans), desc="profile", unit="run") as bar:
        records = sweep(model, rows, plans, device=device, max_new_tokens=max_new_tokens, progress=bar.update)
    output = Path(output_dir)
    write_profile(records, output / "profile.parquet")
    summaries = summarize(records)
    frontier = {s.plan for s in pareto_frontier(summaries)}
    table = [s.to_dict() | {"pareto": s.plan in frontier} for s in summaries]
    (output / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    plot_pareto(summaries, output / "pareto.png")
    return records, summaries
