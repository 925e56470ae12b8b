"""`adactrl pretrain-embedded`: reproduce the shipped embedded model from a seed."""

from __future__ import annotations

import argparse

_FLAGS: dict[str, str] = {
    "seed": "seed of the weights, the drawn questions and the drawn knobs",
    "steps": "steps of the main phase (answers and dense targets)",
    "batch_size": "questions per step",
    "lr": "peak learning rate of the main phase",
    "vision_steps": "steps of the vision-only phase (dense targets)",
    "reasoning_low_fraction": "leading share of main steps on count/exists/position alone at the cheapest tier",
    "reasoning_fraction": "next share on count/exists/position alone at every tier",
    "warm_fraction": "next share on all families at every block and the default top-k, no budget slot",
    "reasoning_weight": "how much more often a reasoning family is drawn than an easy one afterwards",
    "full_plan_fraction": "share of random-knob steps at the full plan; the rest draw knobs at random",
    "top_k_draw_fraction": "share of the random plans that also draw top-k; the rest keep the default top-k",
    "rising_knob_weights": "draw top-k and block count with weights 1..n from the cheapest value up",
    "slot_ramp_fraction": "share of the random-knob stage over which the budget slot fades in",
    "stem_self_only": "build block 0 as a per-token stem: tokens meet only in blocks the knobs reach",
    "expert_size": "hidden width of each expert; top-k of them make a block's MLP for one token",
    "num_experts": "experts per block; the default top-k (8) of them run per token",
    "train_routers": "train the MoE routers (off: they keep their random initial weights)",
    "router_balance_weight": "weight of the MoE load-balancing loss on every router (OLMoE uses 0.01; 0 = off)",
    "dense_weight": "dense-target loss weight in the main phase",
    "max_minutes": "stop early after this wall time",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from adactrl.models.pretrain_config import PretrainConfig

    p = sub.add_parser("pretrain-embedded", help="train the embedded MoE VLM on the synthetic VQA set")
    p.add_argument("--output_dir", required=True, help="where the weights, tokenizer and importance go")
    defaults = {f.name: f.default for f in fields(PretrainConfig)}
    for name, help_text in _FLAGS.items():
        text = f"{help_text} (default {defaults[name]})"
        if isinstance(defaults[name], bool):
            p.add_argument(f"--{name}", action="store_true", default=defaults[name], help=text)
            p.add_argument(f"--no_{name}", dest=name, action="store_false", help=f"turn --{name} off")
        else:
            kind = int if isinstance(defaults[name], int) else float
            p.add_argument(f"--{name}", type=kind, default=defaults[name], help=text)
    p.add_argument("--importance_samples", type=int, default=200)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adactrl.commands.importance import write_importance
    from adactrl.models.pretrain import pretrain
    from adactrl.models.pretrain_config import PretrainConfig

    config = PretrainConfig(output_dir=args.output_dir, **{name: getattr(args, name) for name in _FLAGS})
    pretrain(config, log=lambda line: print(line, flush=True))
    write_importance(args.output_dir, "synthetic", args.importance_samples, args.seed, None)
    print(f"saved the embedded model to {args.output_dir}")
    return 0
