"""MolmoE per-stage latency at the corners of the knob grid, eager vs grouped_mm experts, and
peak memory. CUDA events on a GPU (after a warm-up of every tier x top-k shape), perf_counter on
a CPU. Batch size 1, one image, greedy decoding.

    python benchmarks/molmoe_latency.py --model_path MOLMOE_DIR [--device cuda]
    python benchmarks/molmoe_latency.py --random_init full --plans cheapest --experts eager
    python benchmarks/molmoe_latency.py --random_init tiny            # seconds, a smoke run

--random_init builds the model in memory with random weights at MolmoE-1B's size (full), at a
quarter of its widths (quarter) or at the test fixture's size (tiny). With --write_checkpoint DIR
it writes that random checkpoint instead (in the released layout) and exits: a later run with
--model_path DIR measures the streaming loader's peak resident memory against the weights' size
(peak RSS is a high-water mark, so loading is measured in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adactrl.executor import STAGES, StaticPolicy, execute
from adactrl.models import load_model
from adactrl.models.molmoe import MolmoEVLM
from adactrl.models.molmoe.config import parse_config
from adactrl.models.molmoe.random_checkpoint import (
    MOLMOE_1B,
    TINY,
    build_tokenizer,
    merged,
    preprocessor_config,
    write_random_checkpoint,
)
from adactrl.models.molmoe.tokenizer import MolmoETokenizer

SIZES = {
    "full": {},
    "quarter": {
        "d_model": 512, "mlp_ratio": 1, "vision_backbone": {"image_emb_dim": 256, "image_head_dim": 16, "image_mlp_dim": 1024},
    },
    "tiny": TINY,
}
PROMPT = "What is written on the sign in this picture?"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


def random_model(size: str, device: str, dtype: torch.dtype) -> MolmoEVLM:
    raw = merged(MOLMOE_1B, SIZES[size])
    tokenizer = build_tokenizer()
    molmoe = MolmoETokenizer(tokenizer, eos_id=tokenizer.token_to_id("<|endoftext|>"), bos_id=tokenizer.token_to_id("<|endoftext|>"))
    config = parse_config(raw, preprocessor_config(raw))
    return MolmoEVLM.empty(config, molmoe, device=device, dtype=dtype).init_random_(seed=0)


def plans_for(model, which: str) -> list:
    space, importance = model.knob_space, model.importance
    cheapest = space.plan(space.tiers[0], space.insertion_positions[0], space.top_k_values[0], space.num_blocks_values[0], importance)
    full = space.full_plan(importance)
    if which == "cheapest":
        return [cheapest]
    if which == "cheapest,full":
        return [cheapest, full]
    corners = []
    for tier in (space.tiers[0], space.tiers[-1]):
        for top_k in (space.top_k_values[0], space.top_k_values[-1]):
            for blocks in (space.num_blocks_values[0], space.num_blocks_values[-1]):
                corners.append(space.plan(tier, space.insertion_positions[0], top_k, blocks, importance))
    return corners


def measure(model, image, plan, repeats: int, new_tokens: int, device: str) -> dict:
    runs = [execute(model, image, PROMPT, StaticPolicy(plan), max_new_tokens=new_tokens, device=device) for _ in range(repeats)]
    stages = {s: statistics.median(r.latency_ms[s] for r in runs) for s in (*STAGES, "total")}
    return {"plan": plan.name, "image_tokens": runs[0].num_image_tokens, "new_tokens": len(runs[0].token_ids), **stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_path", help="a MolmoE-1B-0924 directory")
    source.add_argument("--random_init", choices=sorted(SIZES), help="random weights at this size")
    parser.add_argument("--write_checkpoint", default=None, help="with --random_init: write that checkpoint here and exit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--plans", default="corners", choices=["corners", "cheapest", "cheapest,full"])
    parser.add_argument("--experts", default="eager,grouped_mm", help="comma-separated experts implementations")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new_tokens", type=int, default=8)
    parser.add_argument("--no_warmup", action="store_true", help="skip the warm-up run of every tier x top-k shape")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/molmoe_latency_<source>.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    baseline_rss = peak_rss_gb()
    began = time.perf_counter()
    if args.write_checkpoint:
        write_random_checkpoint(args.write_checkpoint, merged(MOLMOE_1B, SIZES[args.random_init]), dtype=dtype, std=0.02)
        print(f"wrote {args.write_checkpoint}; measure it in a fresh process with --model_path {args.write_checkpoint}")
        return
    if args.model_path:
        model = load_model(args.model_path, device=args.device, dtype=dtype)
    else:
        model = random_model(args.random_init, args.device, dtype)
    load_s = time.perf_counter() - began
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    loaded_rss = peak_rss_gb()
    # 1024x768: MolmoE tiles it 3x4 under max_crops 12, 2x3 under 6 and 1x2 under 3
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8))
    plans = plans_for(model, args.plans)
    rows = []
    for experts in args.experts.split(","):
        model.set_experts_implementation(experts)
        if not args.no_warmup:
            for plan in {(p.tier, p.top_k): p for p in plans}.values():
                execute(model, image, PROMPT, StaticPolicy(plan), max_new_tokens=2, device=args.device)
        for plan in plans:
            rows.append({"experts": experts, **measure(model, image, plan, args.repeats, args.new_tokens, args.device)})
            print(_row(rows[-1]), flush=True)
    result = {
        "source": args.model_path or f"random_init {args.random_init}",
        "device": args.device, "dtype": str(dtype), "threads": torch.get_num_threads(), "repeats": args.repeats,
        "weights_gb": weights_gb, "load_s": load_s, "rss_before_load_gb": baseline_rss, "peak_rss_after_load_gb": loaded_rss,
        "peak_rss_gb": peak_rss_gb(), "load_rss_over_weights": (loaded_rss - baseline_rss) / weights_gb,
        "cuda_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if args.device.startswith("cuda") else None,
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    output = Path(args.output or f"benchmarks/results/molmoe_latency_{'model' if args.model_path else args.random_init}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")


def _row(row: dict) -> str:
    stages = " ".join(f"{s} {row[s]:8.1f}" for s in (*STAGES, "total"))
    return f"{row['experts']:10s} {row['plan']:24s} img {row['image_tokens']:5d}  {stages}  (ms, median)"


if __name__ == "__main__":
    main()
