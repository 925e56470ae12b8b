"""`adactrl evaluate`: a trained controller against the static Pareto oracle, the supervised
controller, a random policy and every static plan, across budgets, on a held-out split.
Several controllers (`--controller A B`, e.g. a GRPO and a PPO run) are evaluated side by side,
each a row per budget, with paired differences against the first.

The oracle and the supervised controller come from a profile table (`--profile`, from `adactrl
profile`), or from a small sweep of the validation split run first (`--profile_samples`). The
evaluation itself runs on `--split` (test by default), so the oracle is chosen on other samples.

Budgets default to `--num_budgets` log-spaced points of the controller's calibrated range
(checkpoint extra "budget_range", which `adactrl train` writes); without one, of the profile's
cheapest..most expensive median plan latency times 1.1 (`adactrl train`'s default margin). Budgets outside that range
are evaluated and reported with in_range=false. Milliseconds depend on the thread count: by
default the evaluation measures with the thread count the training run calibrated with.

Every method runs on the same model inputs (no budget token unless the controller's config
appends one); `--budget_token_check` also runs the controller with its budget token flipped and
reports the difference on its own line. Per budget the report gives paired differences (same
questions) in accuracy counted only when the budget is met: controller - oracle, and the
prompt-aware family oracle (the ceiling) - oracle, with standard errors, and the fraction of
the ceiling's gap the controller captures. Budgets and threads follow the first controller.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from adactrl.devices import device_arg

STATIC_CHOICES = ("all", "frontier", "none")
BASELINE_CHOICES = ("all", "oracles")
CEILING = "family oracle"
RANGE_MARGIN = 1.1
"""Without a calibrated range in the checkpoint: the profile's plan latencies times this, as
`adactrl train` calibrates (budget_margin 1.1)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="controller vs oracle, supervised, random and static plans across budgets")
    p.add_argument("--controller", required=True, nargs="+", metavar="CHECKPOINT",
                   help="controller checkpoint (best_model.pt of `adactrl train`); several are evaluated side by side")
    p.add_argument("--controller_names", nargs="+", default=None, metavar="NAME",
                   help="one name per --controller (default: 'controller' for one, each checkpoint's folder for several)")
    p.add_argument("--model_path", default=None, help="model directory, embedded or MolmoE-1B (default: the shipped one)")
    p.add_argument("--dataset_name", default="synthetic")
    p.add_argument("--data_dir", default=None, help="folder of the real datasets (docs/datasets.md)")
    p.add_argument("--split", default="test", help="held-out split the methods are evaluated on")
    p.add_argument("--num_samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="dataset subset and random-policy seed")
    p.add_argument("--profile", default=None, help="profile.parquet (or its directory) from `adactrl profile`")
    p.add_argument("--profile_samples", type=int, default=10, help="without --profile: samples of the sweep run first")
    p.add_argument("--profile_split", default="validation", help="without --profile: split of that sweep")
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="budgets in ms (default: see --num_budgets)")
    p.add_argument("--num_budgets", type=int, default=5, help="log-spaced budgets over the calibrated range")
    p.add_argument("--oracle_statistic", choices=("p95", "median"), default="p95",
                   help="profiled latency a plan must keep within the budget for the oracle")  # fmt: skip
    p.add_argument("--supervised", default=None, help="supervised controller checkpoint (default: trained here)")
    p.add_argument("--static_plans", choices=STATIC_CHOICES, default="all",
                   help="which profiled static plans to evaluate as methods")
    p.add_argument("--baselines", choices=BASELINE_CHOICES, default="all",
                   help="all: oracle, family oracle, supervised and random; oracles: the two oracles only")
    p.add_argument("--budget_token_check", action="store_true", default=True,
                   help="also run the controller with its budget token flipped and report the difference")
    p.add_argument("--no_budget_token_check", dest="budget_token_check", action="store_false",
                   help="skip the budget-token check (one controller run fewer per question and budget)")
    p.add_argument("--max_new_tokens", type=int, default=4)
    p.add_argument("--output_dir", default="outputs/evaluate")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--num_threads", type=int, default=None,
                   help="torch CPU threads (default: the training run's, from the checkpoint; else torch's)")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = evaluate_command(args)
    print(format_table(report))
    print(f"-> {args.output_dir}")
    return 0


def evaluate_command(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from adactrl.controller import load_controller
    from adactrl.data import load_vqa_dataset, read_rows
    from adactrl.baselines.oracle import family_oracles
    from adactrl.evaluation import (
        aggregate, controller_method, family_oracle_method, oracle_method, random_method, run_requests,
        static_methods, supervised_method,
    )  # fmt: skip
    from adactrl.models import load_model
    from adactrl.profiling import pareto_frontier

    if args.num_samples < 1 or args.profile_samples < 1 or args.num_budgets < 1:
        raise ValueError("--num_samples, --profile_samples and --num_budgets must be >= 1")
    if args.budgets and any(not (math.isfinite(b) and b > 0) for b in args.budgets):
        raise ValueError(f"--budgets must be finite and > 0 ms, got {args.budgets}")  # before the sweep
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = load_model(args.model_path, device=args.device)
    space = model.knob_space
    names = controller_names(args.controller, args.controller_names)
    loaded = [load_controller(path, expected_knob_space=space, expected_d_model=model.hidden_size,
                              map_location=args.device) for path in args.controller]  # fmt: skip
    controller, extra = loaded[0]
    if any(other.get("budget_range") != extra.get("budget_range") for _, other in loaded[1:]):
        print(f"note: the controllers were trained on other budget ranges; budgets and threads follow {names[0]}'s")
    num_threads, threads_source = measurement_threads(args.num_threads, extra)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    records, profile_path = profile_records(args, model, output)
    base = train_baselines(args, records, space, output)
    oracle, supervised, summaries = base["oracle"], base["supervised"], base["summaries"]
    budget_range, range_source = calibrated_range(extra, oracle)
    budgets = choose_budgets(args, budget_range, range_source)

    rows, skipped = read_rows(load_vqa_dataset(args.dataset_name, args.split, args.num_samples, args.seed,
                                               data_dir=args.data_dir))  # fmt: skip
    if skipped:
        print(f"skipped {len(skipped)} rows whose image does not decode, e.g. {skipped[0]}")
    overlap = len({int(r["question_id"]) for r in rows} & {r.question_id for r in records})
    if overlap:
        print(f"warning: {overlap} evaluation samples are also in the profile table: the oracle is not held out")

    token = controller.config.budget_token
    methods = [controller_method(c, name) for name, (c, _) in zip(names, loaded)]
    if args.budget_token_check:
        methods.append(controller_method(controller, flipped_name(token, names[0]), budget_token=not token))
    methods.append(oracle_method(oracle, model))
    families = family_oracles(records, args.oracle_statistic)
    missing = {str(row.get("family", "")) for row in rows} - set(families)
    if not missing:
        methods.append(family_oracle_method(families, model, CEILING))
    else:
        print(f"note: no {CEILING} (the ceiling): the profile has no question of families {sorted(missing)}")
    if args.baselines == "all":
        methods += [supervised_method(supervised, model), random_method(space, model.importance, args.seed)]
    chosen = {"all": summaries, "frontier": pareto_frontier(summaries), "none": []}[args.static_plans]
    static = [space.plan(*s.knobs, model.importance) for s in chosen]
    methods += static_methods(static)
    with tqdm(total=len(rows) * len(budgets) * len(methods), desc="evaluate", unit="request") as bar:
        requests = run_requests(
            model, methods, rows, budgets, max_new_tokens=args.max_new_tokens, device=args.device, progress=bar.update
        )

    in_range = [within(b, budget_range) for b in budgets]
    report = {
        "controller": str(args.controller[0]),
        "controllers": dict(zip(names, map(str, args.controller))),
        "model_path": args.model_path or "shipped",
        "dataset": {"name": args.dataset_name, "split": args.split, "num_samples": len(rows), "seed": args.seed},
        "budget_range_ms": list(budget_range),
        "budget_range_source": range_source,
        "budgets": [
            {"budget_ms": b, "in_range": ok, "oracle_plan": oracle.choose(b).plan,
             "oracle_feasible": oracle.choose(b).feasible, "supervised_plan": supervised.plan(b, model.importance).name}
            for b, ok in zip(budgets, in_range)
        ],  # fmt: skip
        "profile": {
            "path": str(profile_path), "num_plans": len(summaries),
            "num_samples": len({r.question_id for r in records}),
            "oracle_statistic": args.oracle_statistic, "samples_shared_with_evaluation": overlap,
        },  # fmt: skip
        "supervised": {"source": args.supervised or "trained on the profile", "metrics": base["supervised_metrics"]},
        "estimator_held_out": base["estimator_metrics"],
        "measurement": {"num_threads": num_threads, "threads_source": threads_source, "device": args.device,
                        "controller_budget_token": token, "static_budget_token": False},
        "paired": paired_report(requests, budgets, {m.name for m in methods}, names, flipped_name(token, names[0])),
        "rows": [row.to_dict() for row in aggregate(requests, budget_range)],
    }  # fmt: skip
    write_outputs(report, requests, summaries, output)
    return report


def flipped_name(token: bool, controller: str = "controller") -> str:
    return f"{controller}, budget token " + ("off" if token else "on")


RESERVED_NAMES = ("oracle", "supervised", "random", CEILING)


def controller_names(paths: list[str], names: list[str] | None) -> list[str]:
    """--controller_names, else "controller" for one checkpoint, else each checkpoint's folder (its
    file name when it is not a best_model.pt): the method names of the rows."""
    if names is None:
        if len(paths) == 1:
            return ["controller"]
        names = [Path(p).parent.name if Path(p).name == "best_model.pt" else Path(p).stem for p in paths]
        hint = "pass --controller_names"
    else:
        hint = "give one distinct name per --controller"
    taken = [n for n in names if n in RESERVED_NAMES or n.startswith("static:")]
    if len(names) != len(paths) or len(set(names)) != len(names) or taken:
        raise ValueError(f"controller names {names} for {len(paths)} checkpoints: {hint}, none of "
                         f"{list(RESERVED_NAMES)} or static:...")  # fmt: skip
    return names


def measurement_threads(flag: int | None, extra: dict) -> tuple[int | None, str]:
    """--num_threads, else the thread count the checkpoint's training run calibrated its budget
    range with (its milliseconds belong to that count), else torch's default."""
    if flag is not None:
        if flag < 1:
            raise ValueError(f"--num_threads must be >= 1, got {flag}")
        return flag, "flag"
    stored = (extra.get("budget_range") or {}).get("num_threads")
    return (int(stored), "checkpoint") if stored else (None, "torch default")


def paired_report(requests, budgets: list[float], names: set[str], controllers: list[str], flipped: str) -> list[dict]:
    """Per budget: paired differences in accuracy counted only when met (see the module docstring),
    of the first controller; with several, also each one - oracle and each later one - the first."""
    from adactrl.evaluation import paired_difference

    first = controllers[0]
    report = []
    for budget in budgets:
        entry = {"budget_ms": budget, "controller_minus_oracle": paired_difference(requests, first, "oracle", budget).to_dict()}
        if len(controllers) > 1:
            entry["controllers_minus_oracle"] = {
                name: paired_difference(requests, name, "oracle", budget).to_dict() for name in controllers}
            entry["minus_first"] = {name: paired_difference(requests, name, first, budget).to_dict()
                                    for name in controllers[1:]}  # fmt: skip
        if CEILING in names:
            ceiling = paired_difference(requests, CEILING, "oracle", budget)
            entry["ceiling_minus_oracle"] = ceiling.to_dict()
            gain = entry["controller_minus_oracle"]["mean"]
            # a share of a gap is only read where there is one: the ceiling > 2 s.e. above the oracle
            entry["gap_captured"] = gain / ceiling.mean if ceiling.mean > 2 * ceiling.standard_error else None
        if flipped in names:
            entry["budget_token_effect"] = paired_difference(requests, flipped, first, budget).to_dict()
        report.append(entry)
    return report


def profile_records(args: argparse.Namespace, model, output: Path) -> tuple[list, Path]:
    """The profile table given with --profile, or a sweep of --profile_samples run now."""
    from adactrl.commands.profile import sweep_and_write
    from adactrl.data import load_vqa_dataset, read_rows
    from adactrl.profiling import read_profile

    if args.profile:
        return read_profile(args.profile), Path(args.profile)
    rows, _ = read_rows(load_vqa_dataset(args.dataset_name, args.profile_split, args.profile_samples, args.seed,
                                         data_dir=args.data_dir))  # fmt: skip
    records, _ = sweep_and_write(
        model, rows, output / "profile", device=args.device, max_new_tokens=args.max_new_tokens
    )
    return records, output / "profile"


def train_baselines(args: argparse.Namespace, records: list, space, output: Path) -> dict:
    """Oracle, supervised controller (loaded or trained) and estimator metrics from the table."""
    from adactrl.baselines.estimator import save_estimator, train_estimator
    from adactrl.baselines.oracle import LookupTableOracle
    from adactrl.baselines.supervised import load_supervised, save_supervised, train_supervised
    from adactrl.profiling import summarize

    summaries = summarize(records)
    oracle = LookupTableOracle.from_summaries(summaries, args.oracle_statistic)
    oracle.check_knob_space(space)
    if args.supervised:
        supervised, supervised_metrics = load_supervised(args.supervised, expected_knob_space=space)
    else:
        supervised, supervised_metrics = train_supervised(oracle, space)
        save_supervised(output / "supervised.pt", supervised, supervised_metrics)
    estimator_metrics = None
    if len(summaries) >= 2:  # a held-out split by plan needs two plans
        estimator, estimator_metrics = train_estimator(records, space)
        save_estimator(output / "latency_estimator.pt", estimator, estimator_metrics)
    return {
        "summaries": summaries, "oracle": oracle, "supervised": supervised,
        "supervised_metrics": supervised_metrics, "estimator_metrics": estimator_metrics,
    }  # fmt: skip


def choose_budgets(args: argparse.Namespace, budget_range: tuple[float, float], source: str) -> list[float]:
    """--budgets, or --num_budgets log-spaced over the range; out-of-range budgets are noted."""
    from adactrl.evaluation import log_spaced_budgets

    budgets = args.budgets or log_spaced_budgets(*budget_range, args.num_budgets)
    if any(not (math.isfinite(b) and b > 0) for b in budgets):
        raise ValueError(f"--budgets must be finite and > 0 ms, got {budgets}")
    low, high = budget_range
    for budget in budgets:
        if not within(budget, budget_range):
            print(f"note: budget {budget:.2f} ms is outside the calibrated range {low:.2f}..{high:.2f} ms "
                  f"({source}); it is evaluated and reported with in_range=false")  # fmt: skip
    return budgets


def within(budget: float, budget_range: tuple[float, float]) -> bool:
    """Inside the range, counting its ends: a log-spaced end point can round a hair outside."""
    low, high = budget_range
    return low * (1 - 1e-9) <= budget <= high * (1 + 1e-9)


def calibrated_range(extra: dict, oracle) -> tuple[tuple[float, float], str]:
    """(low, high) ms and where it came from: the checkpoint's budget_range (the range its
    training run calibrated, as `adactrl train` stores it), else the profile."""
    stored = extra.get("budget_range")
    if stored is not None:
        from adactrl.training.records import BudgetRange

        try:
            budget_range = BudgetRange(float(stored["low_ms"]), float(stored["high_ms"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"the checkpoint's budget_range must hold low_ms < high_ms above 0, got {stored!r} ({error}); "
                "pass --budgets to evaluate at budgets of your own"
            ) from error
        return (budget_range.low_ms, budget_range.high_ms), "checkpoint"
    low, high = oracle.budget_range("median")
    return (low * RANGE_MARGIN, high * RANGE_MARGIN), "profile"


def write_outputs(report: dict, requests, summaries, output: Path) -> None:
    from adactrl.evaluation import static_summaries
    from adactrl.plots import plot_metric_vs_budget, plot_pareto

    rows = report["rows"]
    (output / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_csv(output / "evaluation.csv", rows)
    _write_csv(output / "requests.csv", [r.to_row() for r in requests])
    plot_metric_vs_budget(rows, "accuracy", output / "accuracy_vs_budget.png",
                          ylabel="accuracy (VQA score; CIDEr-D / 10 for captions)", title="Accuracy vs latency budget")  # fmt: skip
    plot_metric_vs_budget(rows, "violation_rate", output / "violation_vs_budget.png", ylabel="budget violation rate",
                          title="Budget violations (target < 5%)", hline=0.05)  # fmt: skip
    evaluated = static_summaries(requests)
    controller = [r for r in rows if r["kind"] == "controller"]
    points = [(f"{r['method']} @ {r['budget_ms']:.1f} ms", r["median_latency_ms"], r["accuracy"]) for r in controller]
    plot_pareto(evaluated or summaries, output / "pareto_with_controller.png",
                title="Static plans and the controller (evaluation split)" if evaluated else
                "Static plans (profile) and the controller", extra_points=points)  # fmt: skip


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def paired_lines(report: dict) -> list[str]:
    """The paired comparisons, one line each; the budget token's effect on its own line."""
    lines = [f"paired differences in accuracy counted only when the budget is met, on the "
             f"{report['dataset']['num_samples']} {report['dataset']['split']} questions (mean ± standard error):"]
    first = next(iter(report["controllers"]))
    for entry in report["paired"]:
        d = entry["controller_minus_oracle"]
        line = f"{entry['budget_ms']:9.2f} {first} - oracle {d['mean']:+.3f} ± {d['standard_error']:.3f}"
        if "ceiling_minus_oracle" in entry:
            c = entry["ceiling_minus_oracle"]
            captured = "n/a" if entry["gap_captured"] is None else f"{entry['gap_captured']:.0%}"
            line += f"; {CEILING} - oracle {c['mean']:+.3f} ± {c['standard_error']:.3f}; gap captured {captured}"
        lines.append(line)
    for entry in report["paired"]:
        if "budget_token_effect" in entry:
            t = entry["budget_token_effect"]
            lines.append(f"{entry['budget_ms']:9.2f} budget token flipped ({t['method_a']}) - {first} "
                         f"{t['mean']:+.3f} ± {t['standard_error']:.3f}")  # fmt: skip
    for entry in report["paired"]:
        for name, d in entry.get("minus_first", {}).items():
            o = entry["controllers_minus_oracle"][name]
            lines.append(f"{entry['budget_ms']:9.2f} {name} - {first} {d['mean']:+.3f} ± {d['standard_error']:.3f}; "
                         f"{name} - oracle {o['mean']:+.3f} ± {o['standard_error']:.3f}")  # fmt: skip
    m = report["measurement"]
    lines.append(f"measured with {m['num_threads'] or 'the default number of'} threads ({m['threads_source']}) on "
                 f"{m['device']}; budget token: "
                 f"controller {'on' if m['controller_budget_token'] else 'off'}, static plans off")  # fmt: skip
    return lines


def format_table(report: dict) -> str:
    columns = (("acc", 6), ("acc@met", 7), ("mean ms", 8), ("p95 ms", 8), ("viol", 6), ("ovh", 6))
    width = max([12] + [len(r["method"]) for r in report["rows"] if r["kind"] != "static"])
    lines = [f"{'budget':>9} {'method':<{width}} " + " ".join(f"{c:>{w}}" for c, w in columns)]
    static = [r for r in report["rows"] if r["kind"] == "static"]
    for budget in report["budgets"]:
        b = budget["budget_ms"]
        flag = "" if budget["in_range"] else " (out of range)"
        for r in (r for r in report["rows"] if r["budget_ms"] == b and r["kind"] != "static"):
            lines.append(
                f"{b:9.2f} {r['method']:<{width}} {r['accuracy']:6.3f} {r['accuracy_within_budget']:7.3f} "
                f"{r['mean_latency_ms']:8.2f} {r['p95_latency_ms']:8.2f} {r['violation_rate']:6.1%} "
                f"{r['controller_overhead']:6.1%}{flag}"
            )
        met = [r for r in static if r["budget_ms"] == b and r["violation_rate"] <= 0.05]
        if met:
            best = max(met, key=lambda r: r["accuracy"])
            lines.append(f"{b:9.2f} {'best static':<{width}} {best['accuracy']:6.3f} (chosen on the evaluation split "
                         f"itself, an upper bound: {best['method']})")  # fmt: skip
    lines += paired_lines(report)
    estimator = report.get("estimator_held_out")
    if estimator:
        r2 = " ".join(f"{k}={v['r2']:.3f}" for k, v in estimator.items() if k != "split")
        lines.append(f"latency estimator, R² on held-out plans: {r2}")
    sup = report["supervised"]["metrics"].get("val")
    if sup:
        accuracies = " ".join(f"{k}={v:.2f}" for k, v in sup.items())
        lines.append(f"supervised controller, held-out budget accuracy: {accuracies}")
    return "\n".join(lines)
