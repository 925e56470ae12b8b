"""`adactrl train`: the main job."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="the main job (for now: the static knob sweep on the embedded default)")
    p.add_argument("--num_samples", type=int, default=30)
    p.add_argument("--output_dir", default="outputs/train")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adactrl.commands import profile

    print("GRPO training on Ray is not built yet; running the best end-to-end job there is: "
          "the static knob sweep of the embedded model.")
    ns = argparse.Namespace(
        model_path=None, dataset_name="synthetic", split="test", num_samples=args.num_samples,
        seed=0, output_dir=args.output_dir, device="cpu",
    )
    return profile.run(ns)
