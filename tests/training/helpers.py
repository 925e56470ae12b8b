"""Shared pieces of the training tests: a deterministic latency and a small run config."""

from __future__ import annotations

import os
from pathlib import Path

from adactrl.executor import InferenceResult
from adactrl.training.config import DataConfig, LearnerConfig, TrainConfig


def cost_latency(result: InferenceResult) -> float:
    """A latency that depends only on the plan and the token counts, so runs are reproducible.

    Image tokens and expert work both cost, so cheaper knobs are faster, as on real hardware.
    """
    plan = result.plan
    expert_work = sum(plan.top_k for _ in plan.blocks)
    return 2.0 + 0.05 * result.num_image_tokens + 0.1 * expert_work


def crash_once_when_armed(flag_dir: str, result: InferenceResult) -> float:
    """`cost_latency`, except that the first call after `flag_dir/armed` appears kills its process.

    The `fired` file is created atomically, so exactly one worker dies, once.
    """
    flags = Path(flag_dir)
    if (flags / "armed").exists():
        try:
            os.close(os.open(flags / "fired", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os._exit(1)
    return cost_latency(result)


def small_config(output_dir: Path, model_dir: str, **overrides) -> TrainConfig:
    """A run of a few steps on the tiny model with the cost-model friendly defaults."""
    values = dict(
        output_dir=str(output_dir),
        model_path=model_dir,
        data=DataConfig(num_train_samples=4, num_val_samples=2, seed=0),
        learner=LearnerConfig(lr=1e-2),
        num_epochs=2,
        batch_size=2,
        group_size=3,
        num_workers=1,
        calibration_samples=1,
        num_val_budgets=2,
        oracle_samples=0,
        mlflow_tracking_uri=f"sqlite:///{output_dir.parent / 'mlflow.db'}",
    )
    values.update(overrides)
    return TrainConfig(**values)
