"""`adactrl infer`: one image + prompt + budget -> answer, chosen knobs, measured latency."""

from __future__ import annotations

import argparse
import json
import math

from adactrl.devices import device_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="answer one question under a latency budget")
    p.add_argument("--image", help="path to an image file")
    p.add_argument("--prompt", help="the question")
    p.add_argument("--budget", type=float, help="latency budget in milliseconds (> 0)")
    p.add_argument("--controller", default=None, help="controller checkpoint (default: untrained)")
    p.add_argument("--model_path", default=None, help="model directory, embedded or MolmoE-1B (default: the shipped one)")
    p.add_argument("--max_new_tokens", type=int, default=4)
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs of the same request first, so the reported latency is not the cold "
                        "start's (CUDA context and kernel loading: about 1 s on an H100); 0 times the first run")
    p.add_argument("--seed", type=int, default=0, help="seeds the untrained controller")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list_vocabulary", action="store_true", help="print the embedded model's words and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adactrl.controller import Controller, ControllerConfig, load_controller
    from adactrl.controller.adaptive import adaptive_infer
    from adactrl.models import load_model
    from adactrl.models.preprocessing import load_image

    model = load_model(args.model_path, device=args.device)
    if args.list_vocabulary:
        print(" ".join(model.tokenizer.vocabulary()))
        return 0
    missing = [f"--{name}" for name in ("image", "prompt", "budget") if getattr(args, name) is None]
    if missing:
        raise ValueError(f"infer needs {', '.join(missing)}")
    check_budget(args.budget)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be 0 or more untimed runs, got {args.warmup}")
    image = load_image(args.image)
    if args.controller:
        controller, _ = load_controller(
            args.controller, expected_knob_space=model.knob_space, expected_d_model=model.hidden_size
        )
        source = args.controller
    else:
        controller = Controller(ControllerConfig(d_model=model.hidden_size, seed=args.seed), model.knob_space)
        source = "untrained (no --controller given): knob choices are close to uniform"
    controller.to(args.device).eval()  # beside the model: stage 1 reads its features on that device
    for _ in range(args.warmup + 1):  # greedy: every run picks the same plan; the last one is reported
        out = adaptive_infer(
            model, controller, image, args.prompt, args.budget, max_new_tokens=args.max_new_tokens, device=args.device
        )
    report = {
        "answer": out.result.answer,
        "controller": source,
        "knobs": out.result.plan.to_dict(),
        "latency_ms": {k: round(v, 3) for k, v in out.result.latency_ms.items()},
        "budget_ms": args.budget,
        "met_budget": out.met_budget,
        "image_tokens": out.result.num_image_tokens,
        "prompt_tokens": out.result.num_prompt_tokens,
        "warmup_runs": args.warmup,
    }
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def check_budget(budget: float) -> None:
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"--budget must be a finite number of milliseconds above 0, got {budget}")


def format_report(report: dict) -> str:
    knobs = report["knobs"]
    ms = report["latency_ms"]
    verdict = "met" if report["met_budget"] else "MISSED"
    lines = [
        f"answer: {report['answer']}",
        f"controller: {report['controller']}",
        f"knobs: tier={knobs['tier']} insertion={knobs['insertion']} top_k={knobs['top_k']} "
        f"num_blocks={knobs['num_blocks']} blocks={knobs['blocks']}",
        "latency (ms): " + " ".join(f"{k}={v:.2f}" for k, v in ms.items() if k != "total"),
        f"total {ms['total']:.2f} ms vs budget {report['budget_ms']:.2f} ms: {verdict}",
    ]
    return "\n".join(lines)
