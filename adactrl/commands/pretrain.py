"""`adactrl pretrain-embedded`: reproduce the shipped embedded model from a seed."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain-embedded", help="train the embedded MoE VLM on the synthetic VQA set")
    p.add_argument("--output_dir", required=True, help="where the weights, tokenizer and importance go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vision_steps", type=int, default=2000, help="steps of the vision-only phase (dense targets)")
    p.add_argument("--dense_weight", type=float, default=0.5, help="dense-target loss weight in the main phase")
    p.add_argument("--max_minutes", type=float, default=None, help="stop early after this wall time")
    p.add_argument("--importance_samples", type=int, default=200)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adactrl.commands.importance import write_importance
    from adactrl.models.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        output_dir=args.output_dir,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        vision_steps=args.vision_steps,
        dense_weight=args.dense_weight,
        max_minutes=args.max_minutes,
    )
    pretrain(config, log=lambda line: print(line, flush=True))
    write_importance(args.output_dir, "synthetic", args.importance_samples, args.seed, None)
    print(f"saved the embedded model to {args.output_dir}")
    return 0
