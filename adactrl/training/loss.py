"""The learner's loss hook: rollout records -> tensors -> one loss, with no VLM forward pass.

Actions are re-scored with `Controller.log_prob` from the stored language feature and latency
token, so a step costs a few small matrix products however large the frozen model is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from adactrl.controller import Controller
from adactrl.grpo import GroupStats, LossOutput, group_advantages, grpo_loss, pairwise_ranking_loss
from adactrl.training.config import LossConfig
from adactrl.training.records import RolloutRecord


@dataclass(frozen=True)
class BatchTensors:
    """N rollout records as tensors, grouped by (sample_id, budget)."""

    actions: Tensor  # [N, 4] long
    old_logp: Tensor  # [N]
    language_feature: Tensor  # [N, d]
    latency_token: Tensor  # [N, d]
    budget_ms: Tensor  # [N]
    rewards: Tensor  # [N]
    group_ids: Tensor  # [N] long, 0..G-1 in order of first appearance
    advantages: Tensor  # [N], centred per group and scaled (LossConfig.advantage_scale), 0 in zero-std groups
    groups: GroupStats

    @classmethod
    def from_records(
        cls, records: Sequence[RolloutRecord], *, adv_eps: float = 1e-6, advantage_scale: str = "group"
    ) -> BatchTensors:
        if not records:
            raise ValueError("a loss needs at least one rollout record")
        keys: dict[tuple[int, float], int] = {}
        group_ids = torch.tensor([keys.setdefault(r.group_key, len(keys)) for r in records])  # [N]
        rewards = torch.tensor([r.reward.total for r in records], dtype=torch.float32)  # [N]
        accuracy = torch.tensor([r.accuracy for r in records], dtype=torch.float32)  # [N]
        groups = group_advantages(rewards, group_ids, eps=adv_eps, scale=advantage_scale)
        groups = groups.with_accuracy_equal(accuracy, group_ids, eps=adv_eps)
        return cls(
            actions=torch.tensor([r.actions for r in records], dtype=torch.long),
            old_logp=torch.tensor([r.old_logp for r in records], dtype=torch.float32),
            language_feature=torch.from_numpy(np.stack([r.language_feature for r in records])).float(),
            latency_token=torch.from_numpy(np.stack([r.latency_token for r in records])).float(),
            budget_ms=torch.tensor([r.budget_ms for r in records], dtype=torch.float32),
            rewards=rewards,
            group_ids=group_ids,
            advantages=groups.advantages,
            groups=groups,
        )


def compute_loss(*, controller: Controller, batch_tensors: BatchTensors, config: LossConfig) -> LossOutput:
    """GRPO (PPO-clipped, entropy bonus) or seed 001's pairwise ranking loss over one batch."""
    b = batch_tensors
    logp, entropy = controller.log_prob(b.actions, b.language_feature, b.budget_ms, b.latency_token)  # [N], [N]
    if config.loss == "pairwise":
        return pairwise_ranking_loss(logp=logp, rewards=b.rewards, group_ids=b.group_ids)
    return grpo_loss(
        logp=logp, old_logp=b.old_logp, advantages=b.advantages, clip_eps=config.clip_eps,
        entropy=entropy, entropy_coef=config.entropy_coef,
    )  # fmt: skip
