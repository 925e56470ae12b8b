"""GRPO against RLlib's PPO on the same controller, model, data, budgets and reward, at an equal
number of training model runs and on the same CPU (issue 32).

    python benchmarks/grpo_vs_ppo.py                                   # seeds 0 1 2, 768 model runs
    python benchmarks/grpo_vs_ppo.py --seeds 0 --max_model_runs 384 --num_test 30

A validation profile of the shipped model comes first: it sets one budget range for every run
(the cheapest and the full plan's p95 latency times 1.1, as `adactrl train` calibrates), so both
algorithms validate at the same budgets, and it is the oracle's table in the evaluation. Then per
seed `adactrl train --algorithm grpo --rollout_mode per_plan` (every plan run end to end, as in
PPO's environment) and `--algorithm ppo` run one after the other with the same flags and
`--max_model_runs`, validating every epoch; the learning curves come from their MLflow
runs (validation reward against model runs and against seconds since the run began). Finally
`adactrl evaluate` runs both best_model.pt side by side on held-out test questions against the
static oracle, paired per question. Every run is timed by its inference thread's CPU time
(`ADACTRL_CPU_CLOCK=thread`, adactrl/timing.py) so that the other jobs of a shared machine do
not move the latencies; wall times are reported as measured.

Writes grpo_vs_ppo.json and grpo_vs_ppo.md under --output_dir and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from controller_quality import CLI, ROOT, step, validation_profile  # this folder is on sys.path when a benchmark runs as a script

ALGORITHMS = ("grpo", "ppo")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max_model_runs", type=int, default=768, help="training model runs of every run")
    p.add_argument("--num_train_samples", type=int, default=48)
    p.add_argument("--num_val_samples", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--group_size", type=int, default=4)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--profile_samples", type=int, default=12, help="validation questions of the profile")
    p.add_argument("--num_test", type=int, default=60, help="test questions of the evaluation (0 skips it)")
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results" / "grpo_vs_ppo"))
    p.add_argument("--reuse", action="store_true", help="skip steps whose outputs already exist")
    p.add_argument("--grpo_args", default="", help='extra flags of the GRPO runs, e.g. "--advantage_scale batch"')
    args = p.parse_args()
    os.environ["ADACTRL_CPU_CLOCK"] = "thread"  # every step below inherits it
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = validation_profile(out, args.profile_samples, args.reuse)
    low, high = budget_range(profile)
    per_epoch = args.num_train_samples * args.group_size
    epochs = -(-args.max_model_runs // per_epoch)
    common = ["--num_train_samples", str(args.num_train_samples), "--num_val_samples", str(args.num_val_samples),
              "--batch_size", str(args.batch_size), "--group_size", str(args.group_size), "--num_workers",
              str(args.num_workers), "--num_val_budgets", "4", "--oracle_samples", "0", "--budget_range_ms",
              f"{low:.3f}", f"{high:.3f}", "--num_epochs", str(epochs), "--max_model_runs", str(args.max_model_runs),
              "--mlflow_tracking_uri", f"sqlite:///{out / 'mlflow.db'}", "--mlflow_experiment", "grpo-vs-ppo"]
    results = []
    for seed in args.seeds:
        runs = {}
        for algorithm in ALGORITHMS:
            run = out / f"seed_{seed}" / algorithm
            # GRPO runs every plan end to end, as PPO's environment does (not the shared-stage rollouts)
            mode = ["--rollout_mode", "per_plan", *shlex.split(args.grpo_args)] if algorithm == "grpo" else []
            step(args.reuse, run / "summary.json", CLI + ["train", "--algorithm", algorithm, "--seed", str(seed),
                 "--output_dir", str(run), "--overwrite", *mode, *common], run.with_suffix(".log"))  # fmt: skip
            runs[algorithm] = curve(run, out / "mlflow.db", per_epoch, args.max_model_runs)
        entry = {"seed": seed, "runs": runs}
        if args.num_test:
            evaluation = out / f"seed_{seed}" / "evaluate"
            step(args.reuse, evaluation / "evaluation.json", CLI + [
                "evaluate", "--controller", *(str(out / f"seed_{seed}" / a / "best_model.pt") for a in ALGORITHMS),
                "--controller_names", *ALGORITHMS, "--profile", str(profile), "--split", "test", "--num_samples",
                str(args.num_test), "--num_budgets", "5", "--static_plans", "none", "--baselines", "oracles",
                "--no_budget_token_check", "--num_threads", "1", "--output_dir", str(evaluation)],
                evaluation.with_suffix(".log"))  # fmt: skip
            entry["test"] = test_results(json.loads((evaluation / "evaluation.json").read_text()))
        results.append(entry)
        write(results, vars(args) | {"budget_range_ms": [low, high]}, out)
    print((out / "grpo_vs_ppo.md").read_text())
    return 0


def budget_range(profile: Path) -> tuple[float, float]:
    """The cheapest and the full plan's p95 latency in the profile, times adactrl train's margin 1.1."""
    from adactrl.models import load_model
    from adactrl.profiling import read_profile, summarize

    space = load_model().knob_space
    by_plan = {s.plan: s for s in summarize(read_profile(profile))}
    cheapest = f"{space.tiers[0]}/ins1/k{space.top_k_values[0]}/b{space.num_blocks_values[0]}"
    full = space.full_plan([0.0] * space.num_layers).name
    return 1.1 * by_plan[cheapest].p95_latency_ms, 1.1 * by_plan[full].p95_latency_ms


def curve(run: Path, db: Path, per_epoch: int, cap: int) -> dict:
    """Validation after each epoch: model runs, seconds since the run began, reward, accuracy, violations."""
    from mlflow.tracking import MlflowClient

    summary = json.loads((run / "summary.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")
    run_id = next(line.split("MLflow run ")[1].split(" ")[0] for line in (run.with_suffix(".log")).read_text()
                  .splitlines() if line.startswith("outputs in"))  # fmt: skip
    start = client.get_run(run_id).info.start_time
    history = {key: sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
               for key in ("val/reward", "val/accuracy", "val/violation_rate")}  # fmt: skip
    points = []
    for epoch, (reward, accuracy, violations) in enumerate(zip(*history.values())):
        points.append({"epoch": epoch, "model_runs": min(epoch * per_epoch, cap), "s": (reward.timestamp - start) / 1e3,
                       "reward": reward.value, "accuracy": accuracy.value, "violations": violations.value})
    with (run / "training_history.csv").open() as f:
        steps = list(csv.DictReader(f))
    rollout = [statistics.fmean(float(r["reward/total"]) for r in steps if int(r["epoch"]) == e)
               for e in sorted({int(r["epoch"]) for r in steps})]  # fmt: skip
    return {"points": points, "rollout_reward": rollout, "wall_s": summary["wall_s"], "best_epoch": summary["best_epoch"]}


def test_results(report: dict) -> list[dict]:
    """Per test budget: accuracy counted when met of each controller and the oracle, ppo - grpo paired."""
    rows = {(r["method"], r["budget_ms"]): r for r in report["rows"]}
    out = []
    for entry in report["paired"]:
        b = entry["budget_ms"]
        d = entry["minus_first"]["ppo"]
        out.append({"budget_ms": b, **{m: rows[(m, b)]["accuracy_within_budget"] for m in (*ALGORITHMS, "oracle")},
                    "ppo_minus_grpo": d["mean"], "se": d["standard_error"],
                    "violations": {m: rows[(m, b)]["violation_rate"] for m in ALGORITHMS}})  # fmt: skip
    return out


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) / len(values) ** 0.5:.3f}"


def at_time(points: list[dict], seconds: float) -> float:
    """The validation reward of the last validation finished by `seconds` into the run."""
    return [p for p in points if p["s"] <= seconds][-1]["reward"]


def format_tables(results: list[dict]) -> str:
    n = len(results)
    counts = [p["model_runs"] for p in results[0]["runs"]["grpo"]["points"]]
    lines = [f"Training reward of the sampled plans, each epoch's mean, mean ± s.e. over {n} seed(s):", "",
             "| model runs | " + " | ".join(ALGORITHMS) + " | ppo - grpo |", "|---|---|---|---|"]
    for i, count in enumerate(counts[1:]):
        values = {a: [r["runs"][a]["rollout_reward"][i] for r in results] for a in ALGORITHMS}
        diff = [p - g for p, g in zip(values["ppo"], values["grpo"])]
        lines.append(f"| {counts[i]}-{count} | " + " | ".join(mean_se(values[a]) for a in ALGORITHMS)
                     + f" | {mean_se(diff)} |")
    lines += ["", f"Validation reward (greedy, 4 budgets) after each epoch, mean ± s.e. over {n} seed(s):", "",
              "| model runs | " + " | ".join(ALGORITHMS) + " | ppo - grpo |", "|---|---|---|---|"]
    for i, count in enumerate(counts):
        values = {a: [r["runs"][a]["points"][i]["reward"] for r in results] for a in ALGORITHMS}
        diff = [p - g for p, g in zip(values["ppo"], values["grpo"])]
        lines.append(f"| {count} | " + " | ".join(mean_se(values[a]) for a in ALGORITHMS) + f" | {mean_se(diff)} |")
    lines += ["", "| seed | grpo wall s | ppo wall s | equal wall budget T s | grpo reward by T | ppo reward by T |",
              "|---|---|---|---|---|---|"]
    for r in results:
        g, p = r["runs"]["grpo"], r["runs"]["ppo"]
        t = min(g["wall_s"], p["wall_s"])
        lines.append(f"| {r['seed']} | {g['wall_s']:.0f} | {p['wall_s']:.0f} | {t:.0f} | "
                     f"{at_time(g['points'], t):.3f} | {at_time(p['points'], t):.3f} |")
    if all("test" in r for r in results):
        lines += ["", "Held-out test, accuracy counted when met (adactrl evaluate, both controllers side by side):", "",
                  "| seed | budget ms | grpo | ppo | oracle | ppo - grpo (paired s.e.) | violations grpo / ppo |",
                  "|---|---|---|---|---|---|---|"]
        for r in results:
            for b in r["test"]:
                lines.append(f"| {r['seed']} | {b['budget_ms']:.1f} | {b['grpo']:.3f} | {b['ppo']:.3f} | {b['oracle']:.3f}"
                             f" | {b['ppo_minus_grpo']:+.3f} ± {b['se']:.3f} | {b['violations']['grpo']:.1%} / "
                             f"{b['violations']['ppo']:.1%} |")
        means = [statistics.fmean(b["ppo_minus_grpo"] for b in r["test"]) for r in results]
        lines += ["", f"ppo - grpo on the test questions, averaged over budgets, per seed: "
                  f"{', '.join(f'{m:+.3f}' for m in means)}; over seeds {mean_se(means)}"]
    return "\n".join(lines)


def write(results: list[dict], args: dict, out: Path) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / "grpo_vs_ppo.json").write_text(json.dumps({"args": args, "date": stamp, "results": results}, indent=2) + "\n")
    (out / "grpo_vs_ppo.md").write_text(format_tables(results) + "\n")


if __name__ == "__main__":
    sys.exit(main())
