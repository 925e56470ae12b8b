"""`adactrl baselines`: from a profile table, the oracle lookup table, the supervised controller
(Exp 2) and the latency estimator (Exp 1), with their held-out metrics."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baselines", help="oracle table, supervised controller and latency estimator from a profile")
    p.add_argument("--profile", required=True, help="profile.parquet (or its directory) from `adactrl profile`")
    p.add_argument("--model_path", default=None, help="the model the profile was made with (default: the shipped one)")
    p.add_argument("--oracle_statistic", choices=("p95", "median"), default="p95")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default=None, help="default: the profile's directory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adactrl.baselines.estimator import EstimatorConfig, save_estimator, train_estimator
    from adactrl.baselines.oracle import LookupTableOracle
    from adactrl.baselines.supervised import SupervisedConfig, save_supervised, train_supervised
    from adactrl.models import load_model
    from adactrl.profiling import read_profile, summarize

    records = read_profile(args.profile)
    space = load_model(args.model_path).knob_space
    oracle = LookupTableOracle.from_summaries(summarize(records), args.oracle_statistic)
    oracle.check_knob_space(space)
    profile = Path(args.profile)
    output = Path(args.output_dir) if args.output_dir else (profile if profile.is_dir() else profile.parent)
    output.mkdir(parents=True, exist_ok=True)

    supervised, supervised_metrics = train_supervised(oracle, space, SupervisedConfig(seed=args.seed))
    save_supervised(output / "supervised.pt", supervised, supervised_metrics)
    estimator, estimator_metrics = train_estimator(records, space, EstimatorConfig(seed=args.seed))
    save_estimator(output / "latency_estimator.pt", estimator, estimator_metrics)
    report = {
        "profile": str(args.profile),
        "oracle_statistic": args.oracle_statistic,
        "oracle_table": [{"from_budget_ms": b, **asdict(c)} for b, c in oracle.table()],
        "supervised": supervised_metrics,
        "estimator_held_out": estimator_metrics,
    }
    (output / "baselines.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"oracle lookup table ({args.oracle_statistic} latency within the budget):")
    for budget, choice in oracle.table():
        print(f"  from {budget:8.2f} ms: {choice.plan:<22} accuracy {choice.accuracy:.3f}")
    val = supervised_metrics["val"]
    print("supervised controller, held-out budgets: " + " ".join(f"{k}={v:.3f}" for k, v in val.items()))
    split = estimator_metrics["split"]
    print(f"latency estimator on {split['held_out_plans']} held-out plans ({split['held_out_rows']} rows):")
    for name, m in estimator_metrics.items():
        if name != "split":
            print(f"  {name:<10} MAE {m['mae']:7.3f} ms  RMSE {m['rmse']:7.3f} ms  R² {m['r2']:6.3f}  "
                  f"(plan-mean R² {m['plan_mean_r2']:6.3f})")
    print(f"-> {output}/supervised.pt, latency_estimator.pt, baselines.json")
    return 0
