"""`adactrl importance`: per-block importance scores of a model on a dataset, as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("importance", help="per-block importance scores on a dataset (JSON)")
    p.add_argument(
        "--model_path", default=None, help="model directory: embedded or MolmoE-1B (default: the shipped embedded one)"
    )
    p.add_argument("--dataset_name", default="synthetic")
    p.add_argument("--num_samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--method",
        choices=("greedy", "leave_one_out"),
        default="greedy",
        help="greedy: remove blocks one by one, least harmful first (what dropping several blocks "
        "needs); leave_one_out: remove each block alone (L times cheaper, blind to shared work)",
    )
    p.add_argument("--output", default=None, help="JSON path (default: importance.json in the model directory)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    write_importance(args.model_path, args.dataset_name, args.num_samples, args.seed, args.output, args.method)
    return 0


def write_importance(
    model_path: str | None,
    dataset_name: str,
    num_samples: int,
    seed: int,
    output: str | None,
    method: str = "greedy",
) -> Path:
    from adactrl.data import load_vqa_dataset
    from adactrl.models import load_model
    from adactrl.models.embedded import IMPORTANCE_FILE, shipped_model_dir
    from adactrl.models.importance import GREEDY, LEAVE_ONE_OUT, compute_importance

    model = load_model(model_path)
    rows = load_vqa_dataset(dataset_name, "validation", num_samples, seed)
    full_name = {"greedy": GREEDY, "leave_one_out": LEAVE_ONE_OUT}[method]
    scores = compute_importance(model, rows, dataset=dataset_name, split="validation", seed=seed, method=full_name)
    path = Path(output) if output else Path(model_path or shipped_model_dir()) / IMPORTANCE_FILE
    scores.save(path)
    ranking = " ".join(str(i) for i in scores.ranking())
    print(f"importance over {scores.num_samples} samples -> {path}\nblocks, most important first: {ranking}")
    return path
