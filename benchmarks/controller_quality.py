"""Does the trained controller beat the best static plan? The acceptance benchmark of issue 31.

    python benchmarks/controller_quality.py                         # 3 seeds, 200 test questions
    python benchmarks/controller_quality.py --seeds 0 --reuse       # one seed, keep finished steps

For each training seed it runs the default `adactrl train --seed S`, then `adactrl evaluate` of
its best_model.pt on the test split (`--num_test` questions, 5 budgets log-spaced over the range
the run calibrated) against the static oracle and the prompt-aware family oracle (the ceiling),
both chosen on one validation profile (`--profile_samples` questions, measured at 1 thread like
training's workers), and again on test questions of the held-out generator seed `--held_out_seed`.
Accuracy counts an answer only when its budget was met; differences are paired per question. The
profile's Pareto-frontier plans also run on the test questions, in the same pass: the best of
them per budget, chosen on the test questions themselves, is an upper bound for any static plan
that does not depend on when the profile was measured (a shared machine's load moves latencies).

Acceptance (issue 31), per seed and test set: controller - oracle >= 0 at every budget and
> 2 standard errors at 2 or more of the 3 middle budgets; violations <= 5% at every budget.
`--cpu_clock thread` times every run by its thread's CPU time (`ADACTRL_CPU_CLOCK`, see
adactrl/timing.py) instead of wall time, for a machine whose other jobs would otherwise be
measured too; the JSON records which clock ran.
Writes controller_quality.json, controller_quality.md and controller_quality.png under
--output_dir, and prints the table. Steps whose outputs exist are skipped with --reuse.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "adactrl.cli"]
MIDDLE = slice(1, 4)
"""The 3 middle budgets of 5."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--num_test", type=int, default=200, help="test questions per evaluation")
    p.add_argument("--profile_samples", type=int, default=60, help="validation questions of the oracles' profile")
    p.add_argument("--held_out_seed", type=int, default=777, help="generator seed of the second test set")
    p.add_argument("--train_args", default="", help="extra `adactrl train` flags (default: none, the defaults)")
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results" / "controller_quality"))
    p.add_argument("--reuse", action="store_true", help="skip steps whose outputs already exist")
    p.add_argument("--cpu_clock", choices=("wall", "thread"), default="wall",
                   help="time runs by wall time (default) or by the inference thread's CPU time")  # fmt: skip
    args = p.parse_args()
    os.environ["ADACTRL_CPU_CLOCK"] = args.cpu_clock  # every step below inherits it
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    profile = validation_profile(out, args.profile_samples, args.reuse)
    results = []
    for seed in args.seeds:
        train = out / f"seed_{seed}" / "train"
        train_s = step(args.reuse, train / "summary.json", CLI + [
            "train", "--seed", str(seed), "--output_dir", str(train), "--overwrite", *args.train_args.split()],
            out / f"seed_{seed}" / "train.log")  # fmt: skip
        summary = json.loads((train / "summary.json").read_text())
        for test_seed in (0, args.held_out_seed):
            evaluation = out / f"seed_{seed}" / f"eval_test_seed_{test_seed}"
            step(args.reuse, evaluation / "evaluation.json", CLI + [
                "evaluate", "--controller", str(train / "best_model.pt"), "--profile", str(profile),
                "--split", "test", "--num_samples", str(args.num_test), "--seed", str(test_seed),
                "--num_budgets", "5", "--static_plans", "frontier", "--baselines", "oracles",
                "--output_dir", str(evaluation)], evaluation.with_suffix(".log"))  # fmt: skip
            report = json.loads((evaluation / "evaluation.json").read_text())
            results.append(judge(seed, test_seed, report, summary.get("wall_s", train_s)))
            write(results, vars(args), out)  # after every evaluation, so a stopped run keeps what finished
    print(format_table(results))
    return 0


def validation_profile(out: Path, num_samples: int, reuse: bool) -> Path:
    """`adactrl profile` of the validation split at one thread, the oracles' table, in out/profile_val."""
    profile = out / "profile_val"
    step(reuse, profile / "profile.parquet", CLI + [
        "profile", "--split", "validation", "--num_samples", str(num_samples), "--num_threads", "1",
        "--output_dir", str(profile)], out / "profile.log")  # fmt: skip
    return profile


def write(results: list[dict], args: dict, out: Path) -> None:
    (out / "controller_quality.json").write_text(json.dumps({"args": args, "results": results}, indent=2) + "\n")
    (out / "controller_quality.md").write_text(format_table(results) + "\n")
    plot(results, out / "controller_quality.png")


def step(reuse: bool, done: Path, command: list[str], log: Path) -> float:
    """Run `command` (output to `log`) unless `reuse` and `done` exists; its wall time in s (0 if skipped)."""
    if reuse and done.exists():
        return 0.0
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - began


def judge(seed: int, test_seed: int, report: dict, train_s: float) -> dict:
    """One (training seed, test set): per budget the three methods and the acceptance checks."""
    rows = {(r["method"], r["budget_ms"]): r for r in report["rows"]}
    budgets = []
    for entry in report["paired"]:
        b = entry["budget_ms"]
        d = entry["controller_minus_oracle"]
        ceiling = rows.get(("family oracle", b))
        static = [r for (_, budget), r in rows.items() if budget == b and r["kind"] == "static"]
        best_static = max(static, key=lambda r: r["accuracy_within_budget"]) if static else None
        budgets.append({
            "budget_ms": b,
            "controller": rows[("controller", b)]["accuracy_within_budget"],
            "oracle": rows[("oracle", b)]["accuracy_within_budget"],
            "ceiling": None if ceiling is None else ceiling["accuracy_within_budget"],
            "best_static_in_sample": None if best_static is None else best_static["accuracy_within_budget"],
            "best_static_plan": None if best_static is None else best_static["method"],
            "diff": d["mean"], "se": d["standard_error"],
            "gap_captured": entry.get("gap_captured"),
            "controller_violations": rows[("controller", b)]["violation_rate"],
            "oracle_violations": rows[("oracle", b)]["violation_rate"],
            "controller_mean_ms": rows[("controller", b)]["mean_latency_ms"],
            "controller_plans": rows[("controller", b)]["num_distinct_plans"],
            "budget_token_effect": entry.get("budget_token_effect", {}).get("mean"),
        })  # fmt: skip
    middle = budgets[MIDDLE]
    return {
        "seed": seed, "test_seed": test_seed, "train_s": train_s, "num_questions": report["dataset"]["num_samples"],
        "budgets": budgets,
        "never_below_oracle": all(b["diff"] >= 0 for b in budgets),
        "middle_wins_over_2se": sum(b["diff"] > 2 * b["se"] for b in middle),
        "max_violations": max(b["controller_violations"] for b in budgets),
        "beats_oracle": all(b["diff"] >= 0 for b in budgets) and sum(b["diff"] > 2 * b["se"] for b in middle) >= 2,
        "violations_ok": all(b["controller_violations"] <= 0.05 for b in budgets),
    }  # fmt: skip


def format_table(results: list[dict]) -> str:
    lines = ["| seed | test seed | budget ms | controller | oracle | ceiling | best static, in-sample | controller - oracle "
             "(s.e.) | gap captured | violations ctrl / oracle | ctrl mean ms | plans |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        for b in r["budgets"]:
            ceiling = "-" if b["ceiling"] is None else f"{b['ceiling']:.3f}"
            best = "-" if b["best_static_in_sample"] is None else f"{b['best_static_in_sample']:.3f}"
            gap = "-" if b["gap_captured"] is None else f"{b['gap_captured']:.0%}"
            lines.append(
                f"| {r['seed']} | {r['test_seed']} | {b['budget_ms']:.1f} | {b['controller']:.3f} | {b['oracle']:.3f} "
                f"| {ceiling} | {best} | {b['diff']:+.3f} ({b['se']:.3f}) | {gap} | {b['controller_violations']:.1%} / "
                f"{b['oracle_violations']:.1%} | {b['controller_mean_ms']:.1f} | {b['controller_plans']} |"
            )
    lines.append("")
    for r in results:
        lines.append(
            f"seed {r['seed']}, test seed {r['test_seed']} ({r['num_questions']} questions, training {r['train_s']:.0f} s): "
            f"beats the oracle: {'yes' if r['beats_oracle'] else 'no'} (never below: {r['never_below_oracle']}, "
            f"middle budgets won by > 2 s.e.: {r['middle_wins_over_2se']} of 3); violations <= 5%: "
            f"{'yes' if r['violations_ok'] else 'no'} (max {r['max_violations']:.1%})"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.5), squeeze=False)
    for ax, r in zip(axes[0], results):
        budgets = [b["budget_ms"] for b in r["budgets"]]
        ax.errorbar(budgets, [b["controller"] for b in r["budgets"]], yerr=[2 * b["se"] for b in r["budgets"]],
                    marker="o", label="controller (±2 s.e. of the paired diff.)", capsize=3)  # fmt: skip
        ax.plot(budgets, [b["oracle"] for b in r["budgets"]], marker="s", label="static oracle")
        if all(b["ceiling"] is not None for b in r["budgets"]):
            ax.plot(budgets, [b["ceiling"] for b in r["budgets"]], marker="^", linestyle="--", label="family oracle")
        ax.set_title(f"seed {r['seed']}, test seed {r['test_seed']}")
        ax.set_xlabel("budget (ms)")
        ax.set_ylabel("accuracy, budget met")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
