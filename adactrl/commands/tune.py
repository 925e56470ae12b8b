"""`adactrl tune`: a Ray Tune search with ASHA over a search space in tune_configs/.

Everything after `--` configures the base run exactly as `adactrl train` flags do; each trial
overrides the flags its search space samples.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adactrl.commands import train

if TYPE_CHECKING:
    from adactrl.training.config import TrainConfig
    from adactrl.orchestration.tuning import SearchOutcome

PATH_FLAGS = ("model_path", "importance_scores_file", "load_checkpoint", "latency_estimator")
"""Trials run in their own working directories: these paths are made absolute first."""
OWN_FLAGS = ("output_dir", "resume", "allow_config_change", "ray_address", "mlflow_tracking_uri", "mlflow_experiment")
"""`adactrl train` flags that `adactrl tune` sets for every trial itself."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="Ray Tune search with ASHA over a tune_configs/ search space",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        usage="adactrl tune --config FILE --num_samples N [options] [-- adactrl train flags for the base run]",
    )  # fmt: skip
    p.add_argument("--config", required=True, help="a .py file whose search_space() returns ray.tune samplers")
    p.add_argument("--num_samples", type=int, default=4, help="trials to sample from the search space")
    p.add_argument("--output_dir", default="outputs/tune", help="for trials/, tune/, trials.csv, best_config.json")
    p.add_argument("--max_concurrent_trials", type=int, default=None,
                   help="cap on trials running at once (None: as many as the cluster holds)")
    p.add_argument("--grace_period", type=int, default=1, help="ASHA: epochs every trial runs before it can be stopped")
    p.add_argument("--reduction_factor", type=int, default=2, help="ASHA: 1 in this many trials continues past a rung")
    p.add_argument("--mlflow_tracking_uri", default=None,
                   help="MLflow tracking URI of the trials' runs (None: sqlite:///mlflow.db in this directory)")
    p.add_argument("--mlflow_experiment", default="adactrl-tune", help="MLflow experiment of the trials' runs")
    p.add_argument("--ray_address", default=None,
                   help="an existing Ray cluster, host:6379 (None: RAY_ADDRESS if set, else a local instance)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_FLAGS",
                   help="`adactrl train` flags for the base run, e.g. -- --num_epochs 4 --num_workers 2")
    p.set_defaults(run=run_command)


def base_args(train_args: list[str]) -> dict[str, Any]:
    """The base run's `adactrl train` flags as a dict (the train command's own parser and defaults)."""
    parser = argparse.ArgumentParser(prog="adactrl tune ... --", add_help=False)
    train.add_parser(parser.add_subparsers(dest="command"))
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    owned = [a for a in train_args if a.split("=")[0].lstrip("-") in OWN_FLAGS]
    if owned:
        raise ValueError(f"{owned[0]} after `--`: set it on `adactrl tune` itself (trials never resume)")
    try:
        args = vars(parser.parse_args(["train", *train_args]))
    except SystemExit:
        raise ValueError(f"invalid `adactrl train` flags after `--`: {shlex.join(train_args)}") from None
    for name in ("command", "run"):
        args.pop(name)
    for name in PATH_FLAGS:
        if args[name] is not None:
            args[name] = str(Path(args[name]).resolve())
    return args


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """The base run with a trial's sampled flags: a TrainConfig, every check of `adactrl train` applied."""
    unknown = sorted(set(params) - set(base))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}: search spaces sample `adactrl train` flags: {sorted(base)}")
    return train.config_from_args(argparse.Namespace(**(base | params)))


def run_command(args: argparse.Namespace) -> int:
    base = base_args(args.train_args)
    make_config = functools.partial(trial_config, base)
    base_config = make_config({})  # the base run's own flags fail here, before Ray and Tune are imported
    from adactrl.orchestration import tuning

    space = tuning.load_search_space(args.config)
    settings = tuning.SearchSettings(
        name=Path(args.config).stem, output_dir=args.output_dir, num_samples=args.num_samples,
        tracking_uri=args.mlflow_tracking_uri, experiment=args.mlflow_experiment, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, max_concurrent_trials=args.max_concurrent_trials, seed=base["seed"],
    )  # fmt: skip
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    logging.getLogger("adactrl.train").addHandler(console)
    try:
        started = tuning.connect(args.ray_address, num_cpus=tuning.search_cpus(base_config))
    except ConnectionError as err:
        print(f"adactrl tune: error: {err}", file=sys.stderr)
        return 2
    import ray

    try:
        outcome = tuning.run_search(space, make_config, settings)
    finally:
        if started:
            ray.shutdown()
    print(format_outcome(outcome, base_flags=[a for a in args.train_args if a != "--"]))
    return 0


def format_outcome(outcome: SearchOutcome, *, base_flags: list[str]) -> str:
    from adactrl.orchestration.tuning import TUNE_METRIC

    keys = sorted({k for t in outcome.trials for k in t.params})
    widths = [max(10, len(k)) for k in keys]
    header = [f"{'trial':<14} {'status':<9} {'epochs':>6} {'best ' + TUNE_METRIC:>21}"]
    lines = ["  ".join(header + [f"{k:>{w}}" for k, w in zip(keys, widths)])]
    for t in sorted(outcome.trials, key=lambda t: t.best_val_reward, reverse=True):
        row = [f"{t.trial_id:<14} {t.status:<9} {t.epochs:>6} {t.best_val_reward:>21.4f}"]
        lines.append("  ".join(row + [f"{_fmt(t.params.get(k)):>{w}}" for k, w in zip(keys, widths)]))
    best = outcome.best
    flags = [arg for k, v in sorted(best.params.items()) for arg in _flag(k, v)]
    lines += [
        "",
        f"best configuration (trial {best.trial_id}, {TUNE_METRIC} {best.best_val_reward:.4f}, "
        f"MLflow run {best.mlflow_run_id} at {outcome.tracking_uri}):",
        *(f"  {k} = {_fmt(v)}" for k, v in sorted(best.params.items())),
        "to train it: adactrl train " + shlex.join([*base_flags, *flags]),
        f"all trials: {outcome.output_dir / 'trials.csv'}; best: {outcome.output_dir / 'best_config.json'}",
    ]  # fmt: skip
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flag(name: str, value: Any) -> list[str]:
    """`adactrl train` arguments that set `name` to `value`, exactly."""
    if isinstance(value, bool):
        return [f"--{name}"] if value else []
    if isinstance(value, (list, tuple)):
        return [f"--{name}", *(str(v) for v in value)]
    return [f"--{name}", str(value)]
