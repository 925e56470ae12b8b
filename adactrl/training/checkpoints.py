"""Training checkpoints: a controller checkpoint (so `load_controller` reads any of them) whose
`extra` holds what resume needs: learner state (optimizer, scheduler, RNG, version) and the
trainer's position (epochs and steps done, budget range, best validation reward, MLflow run).

Every checkpoint is written atomically (`save_controller`); a resume takes the newest one that
still loads, saying which it skipped and why."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adactrl.controller import Controller, load_controller, save_controller
from adactrl.controller.checkpoint import UnreadableCheckpoint
from adactrl.knobs import KnobSpace
from adactrl.training.records import BudgetRange

log = logging.getLogger("adactrl.train")
BEST_MODEL = "best_model.pt"
_EPOCH_FILE = re.compile(r"checkpoint_epoch_(\d+)\.pt$")


def epoch_checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}.pt"


@dataclass
class TrainerState:
    """Where a run stands; checkpointed at every epoch end."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    """Rollout batches consumed (the data position within the run)."""
    budget_range: BudgetRange | None = None
    best_val_reward: float = -math.inf
    best_epoch: int = 0
    untrained_val: dict[str, float] = field(default_factory=dict)
    best_val: dict[str, float] = field(default_factory=dict)
    worker_restarts: int = 0
    learner_restarts: int = 0
    mlflow_run_id: str | None = None
    latency_mode: str = "measured"
    """The run's --latency_mode (checkpoints from before it existed were all "measured")."""
    latency_estimator: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    """The run's `TrainConfig.to_params()`: resume compares the new flags with these."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "step": self.step,
            "budget_range": None if self.budget_range is None else self.budget_range.to_dict(),
            "best_val_reward": self.best_val_reward, "best_epoch": self.best_epoch,
            "untrained_val": dict(self.untrained_val), "best_val": dict(self.best_val),
            "worker_restarts": self.worker_restarts, "learner_restarts": self.learner_restarts,
            "mlflow_run_id": self.mlflow_run_id, "latency_mode": self.latency_mode,
            "latency_estimator": self.latency_estimator, "config": dict(self.config),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        data = dict(data)
        budget = data.pop("budget_range")
        return cls(budget_range=None if budget is None else BudgetRange(**budget), **data)


def save_training_checkpoint(
    path: Path, controller: Controller, learner_state: dict[str, Any], trainer: TrainerState
) -> None:
    save_controller(path, controller, extra={"learner": learner_state, "trainer": trainer.to_dict()})


def load_training_checkpoint(
    path: Path, knob_space: KnobSpace, d_model: int
) -> tuple[Controller, dict[str, Any], TrainerState]:
    controller, extra = load_controller(path, expected_knob_space=knob_space, expected_d_model=d_model)
    if "learner" not in extra or "trainer" not in extra:
        raise ValueError(f"{path} is a controller checkpoint without training state; it cannot be resumed")
    return controller, extra["learner"], TrainerState.from_dict(extra["trainer"])


def epoch_checkpoints(output_dir: Path) -> list[Path]:
    """output_dir's checkpoint_epoch_N.pt files, newest (largest N) first."""
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint_epoch_*.pt") if (m := _EPOCH_FILE.search(p.name))]
    return [path for _, path in sorted(found, reverse=True)]


def load_newest_checkpoint(
    output_dir: Path, knob_space: KnobSpace, d_model: int
) -> tuple[Path, Controller, dict[str, Any], TrainerState]:
    """The newest checkpoint in output_dir that loads -> (path, controller, learner state, trainer
    state). A newer one that does not load (truncated by a full disk or a crash outside adactrl,
    NaN weights) is skipped with a warning saying why; one made for another model stops the resume."""
    paths = epoch_checkpoints(output_dir)
    if not paths:
        raise FileNotFoundError(f"--resume: no checkpoint_epoch_N.pt in {output_dir}")
    reasons = []
    for path in paths:
        try:
            return (path, *load_training_checkpoint(path, knob_space, d_model))
        except UnreadableCheckpoint as err:
            log.warning("--resume: skipping %s, which does not load: %s", path.name, err)
            reasons.append(str(err))
    raise ValueError(f"--resume: no checkpoint in {output_dir} loads ({'; '.join(reasons)}); "
                     "start the run again with --overwrite")  # fmt: skip
