"""The configuration of one `adactrl train` run: data, learner, rollouts and outputs.

Every field is checked in `__post_init__` so that a bad flag fails with a message that says what
to change, before a model is loaded or Ray starts. This module imports neither torch nor
`datasets` at load time, so `adactrl --help` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adactrl.controller import ControllerConfig
    from adactrl.reward import RewardConfig

LOSSES: tuple[str, ...] = ("grpo", "pairwise")
ADVANTAGE_SCALES: tuple[str, ...] = ("group", "batch", "none")
"""How the learner scales rewards centred on their group's mean: by the group's std (GRPO), by
one std over the whole batch, or not at all (mean-centring only, as in Dr. GRPO)."""
LATENCY_MODES: tuple[str, ...] = ("measured", "estimated")
ROLLOUT_MODES: tuple[str, ...] = ("shared", "per_plan")
"""How a rollout worker runs a sample's plans (docs/shared-rollouts.md): the work they share once, each plan's
latency composed from measured stages; or every plan end to end. Both run the same plans from the same seeds."""
ALGORITHMS: tuple[str, ...] = ("grpo", "ppo")
"""The trainers of `adactrl train --algorithm`: the product's GRPO, or RLlib's PPO as a baseline (docs/ppo.md)."""
ESTIMATOR_HINT = (
    "run `adactrl baselines --profile PROFILE --model_path MODEL` on a profile of the model to train one "
    "(it writes latency_estimator.pt)"
)
"""What to do about a missing or unusable --latency_estimator."""


@dataclass(frozen=True)
class LossConfig:
    """What the learner's loss hook computes from one batch of rollout records."""

    loss: str = "grpo"
    """"grpo": PPO-clipped policy gradient on group-centred advantages (see advantage_scale); "pairwise": seed 001's
    ranking loss over same-group pairs."""
    clip_eps: float = 0.2
    """PPO ratio clip for records sampled by an older policy (on-policy records have ratio 1)."""
    entropy_coef: float = 0.01
    """Entropy bonus weight (grpo only): keeps the four sub-action distributions exploring."""
    adv_eps: float = 1e-6
    """Groups whose reward std is below this carry no signal (advantage 0, counted)."""
    advantage_scale: str = "none"
    """`ADVANTAGE_SCALES`. Rewards are always centred on their group's mean; "none" (the default,
    as in Dr. GRPO) stops there, "batch" divides by one std over the batch, and "group" (DESIGN
    §2's per-group normalisation) divides by each group's own std, so a latency-only difference
    between plans weighs as much as a right against a wrong answer. Measured on the embedded
    model (README, Training): "group" sent every question to the `low` tier in 3 of 3 seeds,
    "batch" learned digit -> `high` in 2 of 3, "none" learned it per question and budget in 3 of 3."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if not (math.isfinite(self.clip_eps) and self.clip_eps > 0):
            raise ValueError(f"clip_eps must be > 0 (0.2 is usual), got {self.clip_eps}")
        if not (math.isfinite(self.entropy_coef) and self.entropy_coef >= 0):
            raise ValueError(f"entropy_coef must be a finite number >= 0, got {self.entropy_coef}")
        if not self.adv_eps > 0:
            raise ValueError(f"adv_eps must be > 0, got {self.adv_eps}")
        if self.advantage_scale not in ADVANTAGE_SCALES:
            raise ValueError(
                f"advantage_scale must be one of {list(ADVANTAGE_SCALES)}, got {self.advantage_scale!r}"
            )


@dataclass(frozen=True)
class LearnerConfig:
    """The learner's optimisation plumbing around the loss."""

    lr: float = 3e-3
    """Adam learning rate of stage 2 (and of the budget encoder when it trains)."""
    stage1_lr_ratio: float = 1.0
    """Stage 1 learns at lr * stage1_lr_ratio (0.1 to fine-tune a loaded stage 1, 0 holds it)."""
    train_budget_encoder: bool = False
    """Train the budget MLP too (through stage 1, which reads the budget token)."""
    max_grad_norm: float = 1.0
    """Gradient clipping over all trainable parameters."""
    update_passes: int = 4
    """Adam steps the learner takes on each rollout batch, one full-batch pass each (PPO's epochs;
    --algorithm ppo passes it to RLlib as num_epochs); one version is published per batch. After the
    first pass the records are off-policy for the weights being trained, and the loss's ratio clip
    (clip_eps) bounds how far the passes move the policy (the pairwise loss has no clip: each pass
    is one more step on the same ranking). Measured
    (benchmarks/grpo_vs_ppo.py, docs/controller-quality.md): 4 passes instead of 1 raised GRPO's
    held-out accuracy from 0.055 below the static oracle to 0.038 above it at 768 model runs."""
    max_policy_lag: int | None = None
    """How many versions old a batch may be when the learner takes it. The loop submits request p on
    the weights after update p - (max_policy_lag + 1), so up to max_policy_lag + 1 requests are out at
    once and each batch is exactly this old; a record older still (never, on that schedule) is
    dropped and counted. None: TrainConfig's num_workers (every worker busy plus one request of
    slack); a Learner built with None keeps every record."""
    plateau_patience: int = 1
    """ReduceLROnPlateau on validation reward: epochs without improvement before the lr drops."""
    plateau_factor: float = 0.5
    """ReduceLROnPlateau: the lr is multiplied by this on a plateau."""
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.stage1_lr_ratio) and self.stage1_lr_ratio >= 0):
            raise ValueError(f"stage1_lr_ratio must be >= 0 (1.0 trains both stages alike), got {self.stage1_lr_ratio}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.update_passes < 1:
            raise ValueError(f"update_passes must be >= 1 (1: one Adam step per batch), got {self.update_passes}")
        if self.max_policy_lag is not None and self.max_policy_lag < 0:
            raise ValueError(f"max_policy_lag must be >= 0 (0 keeps only on-policy records), got {self.max_policy_lag}")
        if self.plateau_patience < 0:
            raise ValueError(f"plateau_patience must be >= 0, got {self.plateau_patience}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must lie in (0, 1), got {self.plateau_factor}")


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from. Workers rebuild the same splits from these values locally."""

    dataset_names: tuple[str, ...] = ("synthetic",)
    num_train_samples: int = 192
    """Training samples per dataset (split "train"). 192 at batch 8 is 24 learner steps an epoch,
    192 in the default 8 epochs: on a simulated two-family model (tests/controller/simulated.py)
    the default lr and entropy learned the per-family tier in 192 steps, not in 96."""
    num_val_samples: int = 32
    """Held-out validation samples per dataset (split "validation")."""
    seed: int = 0
    data_dir: str | None = None
    """Folder of the real datasets (docs/datasets.md), an absolute path for the workers; None: the
    Hugging Face cache, then the hub."""

    def __post_init__(self) -> None:
        from adactrl.data import DATASET_NAMES

        if isinstance(self.dataset_names, str) or not self.dataset_names:
            raise ValueError(f"dataset_names must be a non-empty list of names, got {self.dataset_names!r}")
        unknown = [n for n in self.dataset_names if n not in DATASET_NAMES]
        if unknown:
            raise ValueError(f"unknown dataset names {unknown}; choose from {list(DATASET_NAMES)}")
        if len(set(self.dataset_names)) != len(self.dataset_names):
            raise ValueError(f"dataset_names repeats a name: {list(self.dataset_names)}")
        if self.num_train_samples < 1 or self.num_val_samples < 1:
            raise ValueError(
                f"num_train_samples and num_val_samples must be >= 1, got "
                f"{self.num_train_samples} and {self.num_val_samples}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the README's run: it shows learning in a few minutes on 2 CPU cores."""

    output_dir: str = "outputs/train"
    model_path: str | None = None
    """Embedded model directory; None is the shipped model."""
    importance_scores_file: str | None = None
    """Block importance JSON (`adactrl importance`); None keeps the model's own scores."""
    data: DataConfig = field(default_factory=DataConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reward: RewardConfig = field(default_factory=lambda: _default_reward())
    num_epochs: int = 8
    batch_size: int = 8
    """Samples per rollout request; one learner update per request."""
    budgets_per_sample: int = 1
    """Budgets drawn per sample; each (sample, budget) pair is one GRPO group."""
    group_size: int = 4
    """Plans sampled per (sample, budget) group; at least 2, or no plan has a peer to compare with."""
    num_workers: int = 2
    calibration_samples: int = 48
    """Training questions each worker runs the cheapest and the full plan on; the p95 of those
    latencies (times budget_margin) sets the budget range. Questions differ in answer length and
    so in decode time: on the embedded model the cheapest plan's p95 was 25.5 ms over 6 questions
    and 33.7 ms over 200 test questions, where a lowest budget of 28.1 ms left every method 17-28%
    violations (docs/controller-quality.md). 48 questions cost each worker about 4 s on a CPU."""
    budget_margin: float = 1.1
    """Budgets are drawn log-uniformly in [cheapest * margin, full * margin]."""
    budget_range_ms: tuple[float, float] | None = None
    """A fixed (low, high) budget range instead of calibrating one."""
    num_val_budgets: int = 4
    """Validation budgets: this many fixed log-spaced quantiles of the budget range."""
    oracle_samples: int = 32
    """Validation samples swept with every static plan for the Pareto oracle; 0 skips it."""
    max_new_tokens: int = 4
    latency_mode: str = "measured"
    """The latency in the training reward (and the budget calibration): "measured" times each run;
    "estimated" takes the latency estimator's prediction for the run's plan and token counts plus
    the measured controller time, and logs the estimator's error. Validation stays measured."""
    latency_estimator: str | None = None
    """The latency estimator file (`adactrl baselines` writes latency_estimator.pt) for "estimated"."""
    load_checkpoint: str | None = None
    """Start from this controller checkpoint's weights (fresh optimizer)."""
    resume: bool = False
    """Continue exactly from the newest checkpoint_epoch_N.pt in output_dir."""
    mlflow_tracking_uri: str | None = None
    """None keeps MLflow's own default: sqlite:///mlflow.db in the working directory."""
    mlflow_experiment: str = "adactrl-train"
    allow_config_change: bool = False
    """--resume with training settings other than the checkpoint's (refused unless this is set)."""
    ray_address: str | None = None
    """Connect to this Ray cluster instead of starting a local one."""
    worker_cpus: float = 1.0
    """CPUs of each rollout worker's placement-group bundle (its torch threads: this, rounded down, at least 1)."""
    learner_cpus: float = 1.0
    """CPUs of the learner actor's bundle (the learner takes a GPU where the cluster has one beyond the workers')."""
    rollout_mode: str = "shared"
    """`ROLLOUT_MODES`: "shared" runs the work a sample's plans share once (vision per tier, the blocks before each
    insertion point, identical plans) and composes each plan's latency from stages measured once; "per_plan" runs
    every plan end to end. Validation, calibration and the oracle are end to end in both."""
    composition_check_every: int = 0
    """Shared mode: every this-many-th training plan also runs end to end, its record keeping both totals
    (`composed_total`, `checked_total`); 0: never."""
    algorithm: str = "grpo"
    """`ALGORITHMS`: "grpo" trains the controller as designed; "ppo" trains the same controller with RLlib's
    PPO and a value baseline on the same episodes, a reference point (docs/ppo.md)."""
    max_model_runs: int | None = None
    """Stop training after this many training model runs (sampled plans run and scored; validation runs do
    not count), rounded up to whole learner steps; None: num_epochs decides. Both algorithms honour it, so
    they compare at an equal rollout budget."""

    def __post_init__(self) -> None:
        positive = {
            "num_epochs": self.num_epochs, "batch_size": self.batch_size, "num_workers": self.num_workers,
            "budgets_per_sample": self.budgets_per_sample, "calibration_samples": self.calibration_samples,
            "num_val_budgets": self.num_val_budgets, "max_new_tokens": self.max_new_tokens,
        }  # fmt: skip
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (GRPO compares plans within a group; one plan has no peer), "
                f"got {self.group_size}"
            )
        if not (self.worker_cpus > 0 and self.learner_cpus > 0):
            raise ValueError(f"worker_cpus and learner_cpus must be > 0 (0.5 shares a core), got "
                             f"{self.worker_cpus} and {self.learner_cpus}")  # fmt: skip
        if self.learner.max_policy_lag is None:
            object.__setattr__(self, "learner", replace(self.learner, max_policy_lag=self.num_workers))
        if self.oracle_samples < 0:
            raise ValueError(f"oracle_samples must be >= 0 (0 skips the oracle), got {self.oracle_samples}")
        if not (math.isfinite(self.budget_margin) and self.budget_margin > 0):
            raise ValueError(f"budget_margin must be a finite number > 0, got {self.budget_margin}")
        if self.budget_range_ms is not None:
            low, high = self.budget_range_ms
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
                raise ValueError(f"budget_range_ms must be (low, high) ms with 0 < low < high, got {self.budget_range_ms}")
        if self.resume and self.load_checkpoint:
            raise ValueError("--resume continues a run from its own checkpoint; drop --load_checkpoint")
        if self.rollout_mode not in ROLLOUT_MODES:
            raise ValueError(f"rollout_mode must be one of {list(ROLLOUT_MODES)}, got {self.rollout_mode!r}")
        if self.composition_check_every < 0:
            raise ValueError(f"composition_check_every must be >= 0 (0: no check), got {self.composition_check_every}")
        if self.composition_check_every and self.rollout_mode != "shared":
            raise ValueError("--composition_check_every checks shared-stage rollouts; drop it or use --rollout_mode shared")
        if self.latency_mode not in LATENCY_MODES:
            raise ValueError(f"latency_mode must be one of {list(LATENCY_MODES)}, got {self.latency_mode!r}")
        if self.latency_mode == "estimated" and self.latency_estimator is None:
            raise ValueError(f"--latency_mode estimated needs --latency_estimator PATH: {ESTIMATOR_HINT}")
        if self.latency_mode == "measured" and self.latency_estimator is not None:
            raise ValueError("--latency_estimator is used only with --latency_mode estimated; add that flag or "
                             "drop --latency_estimator")  # fmt: skip
        if self.latency_estimator is not None and not Path(self.latency_estimator).is_file():
            raise FileNotFoundError(f"--latency_estimator {self.latency_estimator} is not a file: {ESTIMATOR_HINT}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}, got {self.algorithm!r}")
        if self.max_model_runs is not None and self.max_model_runs < 1:
            raise ValueError(f"max_model_runs must be >= 1 (or unset: --num_epochs decides), got {self.max_model_runs}")
        if self.algorithm == "ppo":
            _check_ppo(self)
        for name in ("model_path", "importance_scores_file", "load_checkpoint"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"--{name} {path} does not exist")

    @property
    def seed(self) -> int:
        return self.data.seed

    def to_params(self) -> dict[str, str | int | float | bool | None]:
        """Flat parameters for MLflow: nested configs become dotted keys."""
        return _flatten(asdict(self))


def _check_ppo(config: TrainConfig) -> None:
    """Refuse GRPO-only settings with --algorithm ppo, naming each, rather than ignore them."""
    learner, defaults = config.learner, LearnerConfig()
    refused = {
        "--resume (a PPO run does not resume; start it again)": config.resume,
        "--latency_mode estimated": config.latency_mode != "measured",
        "--stage1_lr_ratio": learner.stage1_lr_ratio != defaults.stage1_lr_ratio,
        "--train_budget_encoder": learner.train_budget_encoder,
        "--loss pairwise": learner.loss.loss != "grpo",
        "--advantage_scale (PPO standardises its GAE advantages)": learner.loss.advantage_scale != "none",
    }  # fmt: skip
    named = [flag for flag, used in refused.items() if used]
    if named:
        raise ValueError(f"--algorithm ppo does not take {', '.join(named)}; drop them or use --algorithm grpo")


def _default_reward() -> RewardConfig:
    from adactrl.reward import RewardConfig

    return RewardConfig()


def _flatten(data: dict, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            flat[prefix + key] = ",".join(str(v) for v in value)
        else:
            flat[prefix + key] = value
    return flat


@dataclass(frozen=True)
class WorkerConfig:
    """What a rollout worker needs to rebuild the run's model, splits and controller locally."""

    controller: ControllerConfig
    data: DataConfig
    reward: RewardConfig
    model_path: str | None = None
    importance_scores_file: str | None = None
    max_new_tokens: int = 4
    latency_mode: str = "measured"
    latency_estimator: str | None = None
    """An absolute path (the driver resolves it): workers may run in another directory."""
    device: str = "cpu"
    num_threads: int = 1
    """torch threads per worker: one per CPU of its placement-group bundle."""
