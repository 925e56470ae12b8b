"""Shared pieces of the training tests: a deterministic latency and a small run config."""

from __future__ import annotations

import os
from pathlib import Path

from adactrl.baselines.estimator import EstimatorConfig, save_estimator, train_estimator
from adactrl.executor import InferenceResult
from adactrl.knobs import KnobSpace
from adactrl.training.config import DataConfig, LearnerConfig, TrainConfig
from tests.baselines.helpers import record


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
        worker_cpus=0.5,  # the learner and 2 workers fit the tests' 2-CPU Ray instance
        learner_cpus=0.5,
        mlflow_tracking_uri=f"sqlite:///{output_dir.parent / 'mlflow.db'}",
    )
    values.update(overrides)
    return TrainConfig(**values)


def train_tiny_estimator(path: Path, knob_space: KnobSpace) -> Path:
    """A latency estimator for `knob_space`, fitted in well under a second to a hand-made profile
    table of the tiny model's plans (its token counts, a known cost model), saved at `path`."""
    rows = []
    for qid, prompt in enumerate((6, 8)):
        for tier, image in zip(knob_space.tiers, (9, 45, 90)):
            for k in knob_space.top_k_values:
                for n in knob_space.num_blocks_values:
                    vision, projector = 0.5 + 0.01 * image, 0.1
                    prefill, decode = 0.001 * n * k * (image + prompt), 0.15 * n * k
                    rows.append(record(
                        (tier, k, n), qid, 1.0, vision + projector + prefill + decode, num_image_tokens=image,
                        num_prompt_tokens=prompt, num_output_tokens=4, vision_ms=vision, projector_ms=projector,
                        prefill_ms=prefill, decode_ms=decode,
                    ))  # fmt: skip
    estimator, metrics = train_estimator(rows, knob_space, EstimatorConfig(hidden=16, steps=200, lr=1e-2))
    save_estimator(path, estimator, metrics)
    return path
