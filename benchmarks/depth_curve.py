"""How much depth and how many experts the embedded model's answers need, past the knob ranges:
first-answer-token accuracy (teacher-forced, highest tier) with block 0 plus the n - 1 most
important later blocks (n = 1 .. 16, top-8), then with all 16 blocks at top-k 1 .. 8; then the
expert probe (`adactrl.models.expert_probe`): the router's experts against rescaled and random
ones, and the expert output scaled; then, per block, how the experts share a token's update
(`expert_agreement`, on the first `--agreement_questions`). Prints three tables and writes JSON. Leave-one-out importance
cannot show work that many blocks share; this can.

    python benchmarks/depth_curve.py --num_questions 192       # 100 s on the 2-core CPU here, alone
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from adactrl.data import load_vqa_dataset
from adactrl.models.embedded import EmbeddedVLM
from adactrl.models.expert_probe import ProbePoint, expert_agreement, expert_probe
from adactrl.models.importance import CurvePoint, depth_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_questions", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--model_path", default=None, help="an embedded-model directory (the shipped model by default)")
    parser.add_argument("--agreement_questions", type=int, default=32, help="questions for the expert agreement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/depth_curve.json")
    args = parser.parse_args()
    if args.num_questions < 1 or args.agreement_questions < 1:
        parser.error("--num_questions and --agreement_questions must be at least 1")
    torch.set_num_threads(args.threads)

    model = EmbeddedVLM.load(args.model_path)
    rows = load_vqa_dataset("synthetic", args.split, args.num_questions, args.seed)
    started = time.perf_counter()
    points = depth_curve(model, rows, model.importance)
    probe = expert_probe(model, rows, seed=args.seed)
    agreement = expert_agreement(model, rows.select(range(min(args.agreement_questions, len(rows)))), seed=args.seed)
    elapsed = time.perf_counter() - started
    print_table(f"{'blocks':>6s} {'top_k':>5s}", [f"{p.num_blocks:6d} {p.top_k:5d}" for p in points], points)
    print()
    print_table(f"{'routing (blocks 1-15)':24s}", [f"{p.routing:24s}" for p in probe], probe)
    print(
        f"\nhow a token's top-{model.knob_space.default_top_k} experts share its update "
        f"(cosines, {min(args.agreement_questions, len(rows))} questions, every token):"
    )
    columns = ("pair_cosine", "half_cosine", "half_norm", "top1_cosine", "random_cosine", "update_share")
    print("block " + " ".join(f"{c:>13s}" for c in columns))
    for a in agreement:
        print(f"{a.block:5d} " + " ".join(f"{getattr(a, c):13.3f}" for c in columns))
    print(f"{args.num_questions} questions x {len(points) + len(probe)} settings in {elapsed:.0f} s")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model_path": args.model_path or "shipped",
        "num_questions": args.num_questions,
        "split": args.split,
        "seed": args.seed,
        "elapsed_s": elapsed,
        "points": [asdict(p) for p in points],
        "expert_probe": [asdict(p) for p in probe],
        "expert_agreement": [asdict(a) for a in agreement],
    }
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")


def print_table(heading: str, labels: list[str], points: list[CurvePoint] | list[ProbePoint]) -> None:
    families = list(points[0].family_accuracy)
    print(f"{heading} {'acc':>6s} {'nll':>6s} " + " ".join(f"{f[:8]:>8s}" for f in families))
    for label, p in zip(labels, points):
        fam = " ".join(f"{p.family_accuracy[f]:8.2f}" for f in families)
        print(f"{label} {p.accuracy:6.3f} {p.nll:6.3f} {fam}")

if __name__ == "__main__":
    main()
