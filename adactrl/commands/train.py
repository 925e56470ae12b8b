"""`adactrl train`: GRPO training of the controller on Ray (the embedded default with no flags)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from adactrl.training.config import (
    ADVANTAGE_SCALES,
    ALGORITHMS,
    LATENCY_MODES,
    LOSSES,
    ROLLOUT_MODES,
    DataConfig,
    LearnerConfig,
    LossConfig,
    TrainConfig,
)

REWARD_FLAGS = ("alpha", "beta", "gamma", "delta", "epsilon", "miss_penalty", "missed_accuracy_weight")
"""RewardConfig's fields, one flag each; the seeds' five-term reward is `--beta 0.1 --gamma 2
--delta 0.1 --miss_penalty 0 --missed_accuracy_weight 1`."""


def _defaults(cls: type) -> SimpleNamespace:
    """A config class's plain field defaults, without building one (that would import torch)."""
    return SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING})


_T, _L, _D, _LOSS = _defaults(TrainConfig), _defaults(LearnerConfig), _defaults(DataConfig), _defaults(LossConfig)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the controller with GRPO on Ray rollout workers",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    data = p.add_argument_group("data and model")
    data.add_argument("--dataset_names", nargs="+", default=list(_D.dataset_names), metavar="NAME",
                      help="datasets to train and validate on: synthetic, or VQA sets in the local HF cache")
    data.add_argument("--data_dir", default=None, metavar="DIR",
                      help="folder of the real datasets (docs/datasets.md); default: the HF cache, then the hub")
    data.add_argument("--num_train_samples", type=int, default=_D.num_train_samples, help="train samples per dataset")
    data.add_argument("--num_val_samples", type=int, default=_D.num_val_samples, help="validation samples per dataset")
    data.add_argument("--model_path", default=None, help="model directory, embedded or MolmoE-1B (default: the shipped one)")
    data.add_argument("--importance_scores_file", default=None, help="block importance JSON for block selection")
    data.add_argument("--seed", type=int, default=_D.seed)

    run = p.add_argument_group("rollouts")
    run.add_argument("--num_epochs", type=int, default=_T.num_epochs)
    run.add_argument("--batch_size", type=int, default=_T.batch_size, help="samples per rollout request (one learner step)")
    run.add_argument("--group_size", type=int, default=_T.group_size, help="plans sampled per (sample, budget) group")
    run.add_argument("--budgets_per_sample", type=int, default=_T.budgets_per_sample)
    run.add_argument("--num_workers", type=int, default=_T.num_workers, help="rollout workers (one GPU each where there are GPUs)")
    run.add_argument("--budget_range_ms", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                     help="fixed budget range instead of calibrating it from measured latencies")
    run.add_argument("--calibration_samples", type=int, default=_T.calibration_samples)
    run.add_argument("--num_val_budgets", type=int, default=_T.num_val_budgets)
    run.add_argument("--oracle_samples", type=int, default=_T.oracle_samples,
                     help="validation samples swept with every static plan for the oracle (0 skips it)")
    run.add_argument("--max_new_tokens", type=int, default=_T.max_new_tokens)
    run.add_argument("--max_model_runs", type=int, default=None, metavar="N",
                     help="stop training after N training model runs (rounded up to whole learner steps), to "
                          "compare algorithms at an equal rollout budget; unset, --num_epochs decides")
    run.add_argument("--worker_cpus", type=float, default=_T.worker_cpus,
                     help="CPUs reserved per rollout worker (its torch threads); 0.5 lets two share a core")
    run.add_argument("--learner_cpus", type=float, default=_T.learner_cpus,
                     help="CPUs reserved for the learner actor (it takes a GPU where one is left over)")
    run.add_argument("--latency_mode", choices=LATENCY_MODES, default=_T.latency_mode,
                     help="the training reward's latency: measured per run, or the latency estimator's prediction "
                          "plus the measured controller time (validation stays measured)")
    run.add_argument("--latency_estimator", default=None, metavar="PATH",
                     help="latency_estimator.pt from `adactrl baselines`, for --latency_mode estimated")
    run.add_argument("--rollout_mode", choices=ROLLOUT_MODES, default=_T.rollout_mode,
                     help="shared: a sample's plans run the work they share once, each plan's latency composed from "
                          "measured stages (docs/shared-rollouts.md); per_plan: every plan end to end")
    run.add_argument("--composition_check_every", type=int, default=_T.composition_check_every, metavar="N",
                     help="shared mode: also run every N-th training plan end to end, keeping both latencies (0: never)")

    learn = p.add_argument_group("learner")
    learn.add_argument("--algorithm", choices=ALGORITHMS, default=_T.algorithm,
                       help="grpo, or ppo: RLlib's PPO with a value baseline on the same rollouts (docs/ppo.md)")
    learn.add_argument("--lr", type=float, default=_L.lr)
    learn.add_argument("--stage1_lr_ratio", type=float, default=_L.stage1_lr_ratio)
    learn.add_argument("--train_budget_encoder", action="store_true", help="train the budget MLP (frozen by default)")
    learn.add_argument("--loss", choices=LOSSES, default=_LOSS.loss)
    learn.add_argument("--clip_eps", type=float, default=_LOSS.clip_eps)
    learn.add_argument("--advantage_scale", choices=ADVANTAGE_SCALES, default=_LOSS.advantage_scale,
                       help="scale of the group-centred rewards: each group's std (GRPO), one std over the batch, "
                            "or none (see README)")
    learn.add_argument("--entropy_coef", type=float, default=_LOSS.entropy_coef)
    learn.add_argument("--max_grad_norm", type=float, default=_L.max_grad_norm)
    learn.add_argument("--update_passes", type=int, default=_L.update_passes,
                       help="Adam steps on each rollout batch, bounded by the ratio clip (PPO's epochs)")
    learn.add_argument("--max_policy_lag", type=int, default=None,
                       help="how many policy versions old a rollout batch is when the learner takes it; up to "
                            "this + 1 requests are out at once (default: --num_workers)")
    learn.add_argument("--load_checkpoint", default=None, help="start from this controller checkpoint's weights")

    reward = p.add_argument_group("reward (see adactrl.reward.RewardConfig)")
    for name in REWARD_FLAGS:
        reward.add_argument(f"--{name}", type=float, default=None, help="default: RewardConfig's")

    out = p.add_argument_group("outputs")
    out.add_argument("--output_dir", default=_T.output_dir)
    out.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in --output_dir")
    out.add_argument("--allow_config_change", action="store_true",
                     help="with --resume: continue although training flags differ from the checkpoint's")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --output_dir (its checkpoints, histories and summary are removed)")
    out.add_argument("--mlflow_tracking_uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
                          "working directory)")
    out.add_argument("--mlflow_experiment", default=None,
                     help=f"MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else {_T.mlflow_experiment})")
    out.add_argument("--ray_address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.set_defaults(run=run_command)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Every check in the config dataclasses runs here, before a model is loaded or Ray starts."""
    from adactrl.reward import RewardConfig
    from adactrl.training.outputs import resolve_experiment, resolve_tracking_uri

    coefficients = {k: getattr(args, k) for k in REWARD_FLAGS}
    return TrainConfig(
        output_dir=args.output_dir,
        model_path=args.model_path,
        importance_scores_file=args.importance_scores_file,
        data=DataConfig(tuple(args.dataset_names), args.num_train_samples, args.num_val_samples, args.seed,
                        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None),
        learner=LearnerConfig(
            lr=args.lr, stage1_lr_ratio=args.stage1_lr_ratio, train_budget_encoder=args.train_budget_encoder,
            max_grad_norm=args.max_grad_norm, max_policy_lag=args.max_policy_lag, update_passes=args.update_passes,
            loss=LossConfig(loss=args.loss, clip_eps=args.clip_eps, entropy_coef=args.entropy_coef,
                            advantage_scale=args.advantage_scale),
        ),  # fmt: skip
        reward=RewardConfig(**{k: v for k, v in coefficients.items() if v is not None}),
        num_epochs=args.num_epochs,
        batch_size=args.batch_size,
        budgets_per_sample=args.budgets_per_sample,
        group_size=args.group_size,
        num_workers=args.num_workers,
        calibration_samples=args.calibration_samples,
        budget_range_ms=None if args.budget_range_ms is None else tuple(args.budget_range_ms),
        num_val_budgets=args.num_val_budgets,
        oracle_samples=args.oracle_samples,
        max_new_tokens=args.max_new_tokens,
        latency_mode=args.latency_mode,
        latency_estimator=args.latency_estimator,
        rollout_mode=args.rollout_mode,
        composition_check_every=args.composition_check_every,
        load_checkpoint=args.load_checkpoint,
        resume=args.resume,
        allow_config_change=args.allow_config_change,
        worker_cpus=args.worker_cpus,
        learner_cpus=args.learner_cpus,
        mlflow_tracking_uri=resolve_tracking_uri(args.mlflow_tracking_uri),
        mlflow_experiment=resolve_experiment(args.mlflow_experiment, _T.mlflow_experiment),
        ray_address=args.ray_address,
        algorithm=args.algorithm,
        max_model_runs=args.max_model_runs,
    )


def run_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from adactrl.training.outputs import check_tracking_uri, claim_run_dir

    if args.overwrite and args.resume:
        raise ValueError("--resume continues the run in --output_dir and --overwrite replaces it; pass one")
    check_tracking_uri(config.mlflow_tracking_uri)  # fails in seconds, before the model loads or Ray starts
    if config.ray_address not in (None, "auto"):
        from adactrl.orchestration.tuning import check_reachable

        check_reachable(config.ray_address)  # a TCP probe: Ray itself retries an unreachable head for minutes
    with claim_run_dir(Path(config.output_dir), resume=config.resume, overwrite=args.overwrite):
        return _train(config)


def _train(config: TrainConfig) -> int:
    from adactrl.orchestration.dashboard import TrainingDashboard
    from adactrl.orchestration.driver import run_training  # Ray is imported only once the flags are good

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    logging.getLogger("adactrl.train").addHandler(console)
    outcome = run_training(config, observers=[TrainingDashboard(Path(config.output_dir).name)])
    print(f"outputs in {outcome.output_dir} (MLflow run {outcome.run_id} at {outcome.tracking_uri}); "
          f"wall time {outcome.wall_s:.0f} s")  # fmt: skip
    return 0
