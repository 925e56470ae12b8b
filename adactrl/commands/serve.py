"""`adactrl serve`: budget-aware serving of a trained controller on Ray Serve (docs/serving.md)."""

from __future__ import annotations

import argparse

SETTINGS = {
    "controller": (str, "controller checkpoint, e.g. outputs/train/best_model.pt (required without --config)"),
    "model_path": (str, "model directory, embedded or MolmoE-1B (default: the shipped embedded model)"),
    "num_replicas": (int, "model replicas, each with a model and a controller copy (default 1)"),
    "device": (str, "cpu or cuda: with cuda each replica gets one GPU of the cluster (default cpu)"),
    "replica_cpus": (float, "CPUs reserved for each model replica (default 1)"),
    "num_threads": (int, "torch threads per replica (default: the checkpoint's, else --replica_cpus)"),
    "max_new_tokens": (int, "answer tokens at most (default 4)"),
    "calibration_runs": (int, "timed runs of the cheapest plan at replica start, p95 kept (default 8)"),
    "host": (str, "address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"),
    "port": (int, "HTTP port (default 8000)"),
}
"""ServeConfig's fields, one flag each; None when not given, so a --config file's value stands."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a controller over HTTP on Ray Serve, requests with latency budgets")
    for name, (kind, text) in SETTINGS.items():
        p.add_argument(f"--{name}", type=kind, default=None, help=text)
    p.add_argument("--config", default=None,
                   help="a Serve config file (`serve deploy` format, e.g. cluster/serve_config.yaml); flags override it")
    p.add_argument("--ray_address", default=None,
                   help="join this Ray cluster and leave it running on exit (default: start a local instance, "
                        "stopped on exit)")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adactrl.serving.config import ServeConfig, read_serve_file

    given = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    if args.config:
        config = read_serve_file(args.config, given)
    elif "controller" not in given:
        raise ValueError("serve needs --controller CKPT (a best_model.pt from adactrl train) or --config FILE")
    else:
        config = ServeConfig(**given)
    if not args.ray_address:
        # Here, not in a replica: Serve would retry a replica that cannot load it, with a traceback.
        from adactrl.controller import load_controller

        load_controller(config.controller)
    from adactrl.orchestration.serve import run_serve

    run_serve(config, args.ray_address)
    return 0
