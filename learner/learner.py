"""The learner: owns the optimizer, clipping, scheduler, policy versions, metrics and its state.

A plain class: the orchestration layer runs it in process (`LocalBackend`) or inside a Ray actor
of its own (`adactrl.orchestration.ray_backend.LearnerActor`, which adds the object store). It
takes rollout batches in request order, drops records older than `max_policy_lag` versions (the
driver's schedule sends none), forms GRPO groups by (sample_id, budget), takes `update_passes` Adam
steps per batch through the loss hook (the ratio clip bounds the later ones), and bumps the version
once. The loss metrics are the first pass's (the batch as the policy that sampled it saw it; the
gradient norm is of that pass too); `loss/last_pass_approx_kl` and `loss/last_pass_clip_fraction`
say how far the later passes moved.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from adactrl.controller import Controller
from adactrl.grpo import LossOutput
from adactrl.metrics import (
    LEARNER_LR_PREFIX,
    LEARNER_UPDATE_MS,
    LOSS_GRAD_NORM,
    LOSS_LAST_PASS_APPROX_KL,
    LOSS_LAST_PASS_CLIP_FRACTION,
    POLICY_LAG,
    POLICY_VERSION,
    ROLLOUT_ACCURACY,
    ROLLOUT_COMPOSITION_ABS_ERROR,
    ROLLOUT_COMPOSITION_ERROR,
    ROLLOUT_LATENCY_MS,
    ROLLOUT_NUM_COMPOSITION_CHECKS,
    ROLLOUT_NUM_PLANS,
    ROLLOUT_NUM_SKIPPED,
    ROLLOUT_NUM_STALE_DROPPED,
    ROLLOUT_PLANS_PER_S,
    ROLLOUT_VIOLATION_RATE,
)
from adactrl.reward import Reward
from adactrl.training.config import LearnerConfig
from adactrl.training.loss import BatchTensors, compute_loss
from adactrl.training.records import (
    CHECKED_TOTAL,
    COMPOSED_TOTAL,
    RolloutBatch,
    RolloutRecord,
    WeightsRef,
    estimate_errors,
)
from adactrl.training.summary import per_dataset


class NonFiniteError(ValueError):
    """A NaN or infinite reward, loss or gradient: the step is refused and nothing changes."""


@dataclass(frozen=True)
class LearnerStep:
    version: int
    """The policy version after this batch (unchanged when nothing was left to learn from)."""
    updated: bool
    num_stale_dropped: int
    metrics: dict[str, float]


class Learner:
    def __init__(self, controller: Controller, config: LearnerConfig) -> None:
        self.controller = controller
        self.config = config
        groups = controller.trainable_parameters(
            config.lr, config.stage1_lr_ratio, train_budget_encoder=config.train_budget_encoder
        )
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.Adam(groups)
        self.scheduler = ReduceLROnPlateau(
            self.optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
        )
        self.version = 0
        self.device = next(controller.parameters()).device

    def update(self, batch: RolloutBatch) -> LearnerStep:
        """update_passes Adam steps on the batch's fresh-enough records; raises NonFiniteError before any change."""
        began = time.perf_counter()
        records = list(batch.records)
        _check_rewards(records)
        max_lag = math.inf if self.config.max_policy_lag is None else self.config.max_policy_lag
        fresh = [r for r in records if self.version - r.policy_version <= max_lag]
        dropped = len(records) - len(fresh)
        metrics = rollout_metrics(batch) | {ROLLOUT_NUM_STALE_DROPPED: float(dropped)}
        if not fresh:
            return LearnerStep(self.version, False, dropped, metrics | {POLICY_VERSION: float(self.version)})
        tensors = BatchTensors.from_records(
            fresh, adv_eps=self.config.loss.adv_eps, advantage_scale=self.config.loss.advantage_scale
        )
        _check_inputs(tensors, batch)
        tensors = _to_device(tensors, self.device)
        self.controller.train()
        restore = _LearnerState(self) if self.config.update_passes > 1 else None
        try:
            out, grad_norm = self._step(tensors, batch)
            last = out
            for _ in range(self.config.update_passes - 1):
                last, _ = self._step(tensors, batch)
        except NonFiniteError:
            if restore is not None:
                restore.apply(self)
            raise
        lag = [self.version - r.policy_version for r in fresh]
        self.version += 1
        metrics |= out.to_metrics() | tensors.groups.to_metrics()
        if last is not out and last.approx_kl is not None:
            metrics |= {LOSS_LAST_PASS_APPROX_KL: float(last.approx_kl),
                        LOSS_LAST_PASS_CLIP_FRACTION: float(last.clip_fraction)}  # fmt: skip
        metrics |= {
            LOSS_GRAD_NORM: float(grad_norm),
            POLICY_LAG: statistics.fmean(lag),
            POLICY_VERSION: float(self.version),
            LEARNER_UPDATE_MS: (time.perf_counter() - began) * 1000.0,
        }
        metrics |= {LEARNER_LR_PREFIX + g["name"]: float(g["lr"]) for g in self.optimizer.param_groups}
        return LearnerStep(self.version, True, dropped, metrics)

    def _step(self, tensors: BatchTensors, batch: RolloutBatch) -> tuple[LossOutput, Tensor]:
        """One Adam step on the batch; raises NonFiniteError before the optimizer moves."""
        out = compute_loss(controller=self.controller, batch_tensors=tensors, config=self.config.loss)
        if not torch.isfinite(out.loss):
            raise NonFiniteError(
                f"the loss is {out.loss.item()} on the batch of request {batch.request_id} (epoch {batch.epoch}, "
                f"worker {batch.worker_index}); the step was not taken and the last checkpoint is intact"
            )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"the gradient norm is {grad_norm.item()} on request {batch.request_id} (epoch {batch.epoch}); "
                "the step was not taken and the last checkpoint is intact"
            )
        self.optimizer.step()
        return out, grad_norm

    def weights(self) -> WeightsRef:
        """The current controller state with its version: a CPU copy, detached from the learner's tensors."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.controller.state_dict().items()}
        return WeightsRef(self.version, state)

    def scheduler_step(self, val_reward: float) -> None:
        """ReduceLROnPlateau on the validation reward (higher is better)."""
        if not np.isfinite(val_reward):
            raise NonFiniteError(f"validation reward is {val_reward}; the scheduler was not stepped")
        self.scheduler.step(val_reward)

    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs: optimizer, scheduler, version and the global RNG states."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            # Copies: the optimizer's state_dict shares its moment tensors, which later steps change.
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "version": self.version,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)},
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; the controller's weights are restored by the caller beforehand."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = int(state["version"])
        torch.set_rng_state(state["torch_rng"])
        rng = state["numpy_rng"]
        keys = rng["keys"].numpy().astype(np.uint32)
        np.random.set_state((rng["kind"], keys, rng["pos"], rng["has_gauss"], rng["cached"]))


class _LearnerState:
    """The controller's weights and the optimizer's state before a batch's passes: a later pass that
    turns non-finite puts them back, so a refused batch changes nothing."""

    def __init__(self, learner: Learner) -> None:
        self.weights = copy.deepcopy(learner.controller.state_dict())
        self.optimizer = copy.deepcopy(learner.optimizer.state_dict())

    def apply(self, learner: Learner) -> None:
        learner.controller.load_state_dict(self.weights)
        learner.optimizer.load_state_dict(self.optimizer)


def rollout_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Means over a batch's plans: reward components, accuracy, latency, violations, throughput,
    and with --latency_mode estimated the latency estimator's error; on a batch that mixes
    datasets, the means of each dataset's plans too (`rollout/<dataset>/accuracy`, ...); in shared
    mode with --composition_check_every, the composed latency's error against the end-to-end runs."""
    records = batch.records
    metrics = {
        ROLLOUT_NUM_PLANS: float(len(records)),
        ROLLOUT_NUM_SKIPPED: float(len(batch.skipped)),
        ROLLOUT_PLANS_PER_S: batch.plans_per_s,
    }
    if records:
        metrics |= _record_means(records) | per_dataset(records, _record_means)
    errors = [(ms[COMPOSED_TOTAL] - ms[CHECKED_TOTAL]) / ms[CHECKED_TOTAL]
              for ms in (r.latency_ms for r in records) if CHECKED_TOTAL in ms and ms[CHECKED_TOTAL] > 0]  # fmt: skip
    if errors:
        metrics |= {ROLLOUT_NUM_COMPOSITION_CHECKS: float(len(errors)),
                    ROLLOUT_COMPOSITION_ERROR: statistics.median(errors),
                    ROLLOUT_COMPOSITION_ABS_ERROR: statistics.median(abs(e) for e in errors)}  # fmt: skip
    return metrics


def _record_means(records: Sequence[RolloutRecord]) -> dict[str, float]:
    return mean_reward([r.reward for r in records]).to_metrics() | {
        ROLLOUT_ACCURACY: statistics.fmean(r.accuracy for r in records),
        ROLLOUT_LATENCY_MS: statistics.fmean(r.latency_ms["total"] for r in records),
        ROLLOUT_VIOLATION_RATE: statistics.fmean(float(r.violated) for r in records),
    } | estimate_errors(r.latency_ms for r in records)


def mean_reward(rewards: list[Reward]) -> Reward:
    return Reward(**{f.name: statistics.fmean(getattr(r, f.name) for r in rewards) for f in fields(Reward)})


def _to_device(tensors: BatchTensors, device: torch.device) -> BatchTensors:
    """The batch on the learner's device (records arrive as CPU arrays)."""
    if device.type == "cpu":
        return tensors
    moved = {f.name: getattr(tensors, f.name).to(device) for f in fields(tensors)
             if isinstance(getattr(tensors, f.name), torch.Tensor)}  # fmt: skip
    return replace(tensors, **moved)


def _check_inputs(tensors: BatchTensors, batch: RolloutBatch) -> None:
    for name in ("old_logp", "language_feature", "latency_token"):
        values = getattr(tensors, name)
        if not bool(torch.isfinite(values).all()):
            raise NonFiniteError(
                f"non-finite {name} in the batch of request {batch.request_id} (epoch {batch.epoch}, worker "
                f"{batch.worker_index}); the step was not taken and the last checkpoint is intact"
            )


def _check_rewards(records: list[RolloutRecord]) -> None:
    bad = [(r.sample_id, r.reward.total) for r in records if not np.isfinite(r.reward.total)]
    if bad:
        raise NonFiniteError(
            f"non-finite rewards (sample_id, reward) {bad[:5]}; the step was not taken and the last checkpoint is intact"
        )
