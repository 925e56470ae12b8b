"""GRPO math over one batch of plans: group-centred advantages and the policy losses.

A plan's log-probability ``logp`` is the sum over its four sub-actions (tier, insertion, top_k,
num_blocks). A group is one (sample, budget) pair; its plans are compared only with each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from adactrl.metrics import (
    FRAC_ACCURACY_EQUAL,
    FRAC_REWARD_ZERO_STD,
    LOSS_APPROX_KL,
    LOSS_CLIP_FRACTION,
    LOSS_ENTROPY,
    LOSS_NUM_PAIRS,
    LOSS_POLICY,
    LOSS_RATIO_MEAN,
    LOSS_TOTAL,
    ROLLOUT_NUM_GROUPS,
)
from adactrl.training.config import ADVANTAGE_SCALES


@dataclass(frozen=True)
class GroupStats:
    """Advantages of a batch and how many of its groups carried no signal."""

    advantages: Tensor  # [N], detached
    num_groups: int
    num_zero_std: int
    """Groups whose rewards were all equal (single-member groups included): advantage 0."""
    num_accuracy_equal: int = 0
    """Groups whose plans all scored the same accuracy (`with_accuracy_equal`): their rewards
    differ only through latency, so measured noise makes them rarely zero-std."""

    @property
    def frac_reward_zero_std(self) -> float:
        return self.num_zero_std / self.num_groups if self.num_groups else 0.0

    def with_accuracy_equal(self, accuracy: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> GroupStats:
        """These stats with `num_accuracy_equal` counted from the plans' accuracies [N]."""
        return replace(self, num_accuracy_equal=count_equal_groups(accuracy, group_ids, eps=eps))

    def to_metrics(self) -> dict[str, float]:
        frac_equal = self.num_accuracy_equal / self.num_groups if self.num_groups else 0.0
        return {ROLLOUT_NUM_GROUPS: float(self.num_groups), FRAC_REWARD_ZERO_STD: self.frac_reward_zero_std,
                FRAC_ACCURACY_EQUAL: frac_equal}  # fmt: skip


def count_equal_groups(values: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> int:
    """Groups whose values [N] all lie within eps of each other (max - min < eps)."""
    _check_groups(values, group_ids)
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [N]: group index 0..G-1
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    high = values.new_full((num_groups,), -torch.inf).scatter_reduce(0, inverse, values, "amax")  # [G]
    low = values.new_full((num_groups,), torch.inf).scatter_reduce(0, inverse, values, "amin")  # [G]
    return int((high - low < eps).sum())


def _check_groups(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be [N], got {tuple(rewards.shape)} and "
            f"{tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got {rewards.dtype}")


def group_advantages(
    rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6, scale: str = "group"
) -> GroupStats:
    """Rewards centred on their group's mean, then scaled (`ADVANTAGE_SCALES`): "group" divides
    by the group's population std, "batch" by the std of all centred rewards of the batch, "none"
    leaves them. All-equal groups get exactly 0 under every scale.

    "group" makes every group's best plan count alike however little separates it from the
    rest, so a latency-only difference weighs as much as a right against a wrong answer;
    "batch" and "none" keep those differences in proportion.
    """
    _check_groups(rewards, group_ids)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {list(ADVANTAGE_SCALES)}, got {scale!r}")
    rewards = rewards.detach()
    # inverse [N]: each plan's group index 0..G-1; counts [G]: members per group
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    num_groups = counts.numel()
    sums = rewards.new_zeros(num_groups).index_add_(0, inverse, rewards)  # [G]
    centered = rewards - (sums / counts)[inverse]  # [N]
    var = rewards.new_zeros(num_groups).index_add_(0, inverse, centered**2) / counts  # [G]
    std = var.sqrt()  # [G]
    zero_std = std < eps  # [G]; a single member has std 0
    if scale == "group":
        scaled = centered / (std[inverse] + eps)  # [N]
    elif scale == "batch":
        scaled = centered / (centered.pow(2).mean().sqrt() + eps)  # [N]
    else:
        scaled = centered
    advantages = torch.where(zero_std[inverse], torch.zeros_like(centered), scaled)  # [N]
    return GroupStats(advantages, num_groups, int(zero_std.sum()))


def group_advantages_loop(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> GroupStats:
    """Readable reference for `group_advantages`: one group at a time."""
    _check_groups(rewards, group_ids)
    advantages = torch.zeros_like(rewards.detach())  # [N]
    num_zero_std = 0
    group_list = group_ids.unique().tolist()
    for gid in group_list:
        members = group_ids == gid  # [N] bool
        group = rewards[members].detach()  # [n_g]
        std = group.std(correction=0)
        if std < eps:
            num_zero_std += 1
            continue
        advantages[members] = (group - group.mean()) / (std + eps)
    return GroupStats(advantages, len(group_list), num_zero_std)


@dataclass(frozen=True)
class LossOutput:
    """A loss to back-propagate and its detached diagnostics; fields a loss lacks stay None."""

    loss: Tensor  # [], differentiable
    policy_loss: Tensor  # [], detached
    entropy: Tensor | None = None
    clip_fraction: Tensor | None = None
    """Share of plans whose gradient the clip removed (ratio outside the band on the side the
    advantage pushes towards)."""
    approx_kl: Tensor | None = None
    """KL(old || new) estimate, mean of (ratio - 1) - log(ratio): unbiased and >= 0."""
    ratio_mean: Tensor | None = None
    num_pairs: int | None = None

    def to_metrics(self) -> dict[str, float]:
        values = {
            LOSS_TOTAL: self.loss, LOSS_POLICY: self.policy_loss, LOSS_ENTROPY: self.entropy,
            LOSS_CLIP_FRACTION: self.clip_fraction, LOSS_APPROX_KL: self.approx_kl,
            LOSS_RATIO_MEAN: self.ratio_mean, LOSS_NUM_PAIRS: self.num_pairs,
        }
        return {key: float(v.detach()) if isinstance(v, Tensor) else float(v)
                for key, v in values.items() if v is not None}


def grpo_loss(
    *, logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_eps: float,
    entropy: Tensor | None = None, entropy_coef: float = 0.0,
) -> LossOutput:
    """PPO-clipped policy gradient: -mean(min(r*A, clip(r, 1-eps, 1+eps)*A)) - coef*mean(H).

    r = exp(logp - old_logp). On-policy (old_logp == logp) the gradient is plain REINFORCE,
    -mean(A * grad logp). Gradients flow only through logp (and entropy).
    """
    if logp.dim() != 1 or logp.numel() == 0:
        raise ValueError(f"logp must be a non-empty [N] tensor, got shape {tuple(logp.shape)}")
    if old_logp.shape != logp.shape or advantages.shape != logp.shape:
        raise ValueError("logp, old_logp and advantages must have the same shape [N]")
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0 (0.2 is usual), got {clip_eps}")
    adv = advantages.detach()  # [N]
    log_ratio = logp - old_logp.detach()  # [N]
    ratio = log_ratio.exp()  # [N]
    clipped_ratio = ratio.clamp(1 - clip_eps, 1 + clip_eps)  # [N]
    policy_loss = -torch.minimum(ratio * adv, clipped_ratio * adv).mean()
    loss = policy_loss
    entropy_mean = None
    if entropy is not None:
        entropy_mean = entropy.mean()
        loss = loss - entropy_coef * entropy_mean
    with torch.no_grad():
        clipped = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        approx_kl = ((ratio - 1) - log_ratio).mean()
    return LossOutput(
        loss=loss, policy_loss=policy_loss.detach(),
        entropy=None if entropy_mean is None else entropy_mean.detach(),
        clip_fraction=clipped.float().mean(), approx_kl=approx_kl, ratio_mean=ratio.detach().mean(),
    )


def _check_pairwise(logp: Tensor, rewards: Tensor, group_ids: Tensor) -> None:
    _check_groups(rewards, group_ids)
    if logp.shape != rewards.shape:
        raise ValueError(f"logp must be [N] like rewards, got {tuple(logp.shape)}")


def pairwise_ranking_loss(*, logp: Tensor, rewards: Tensor, group_ids: Tensor) -> LossOutput:
    """Seed 001's ranking loss: the mean of -log sigmoid(logp_i - logp_j) over same-group pairs
    with reward_i > reward_j.

    Equal-reward pairs are skipped; with no pair at all the loss is 0, still attached to logp.
    Builds [N, N] masks, which is fine for the batch sizes of a controller step.
    """
    _check_pairwise(logp, rewards, group_ids)
    rewards = rewards.detach()
    same_group = group_ids[:, None] == group_ids[None, :]  # [N, N]
    better = rewards[:, None] > rewards[None, :]  # [N, N]: i beats j
    pairs = same_group & better  # [N, N]
    num_pairs = int(pairs.sum())
    if num_pairs == 0:
        loss = (logp * 0.0).sum()
    else:
        margin = logp[:, None] - logp[None, :]  # [N, N]
        loss = -F.logsigmoid(margin[pairs]).mean()
    return LossOutput(loss=loss, policy_loss=loss.detach(), num_pairs=num_pairs)


def pairwise_ranking_loss_loop(*, logp: Tensor, rewards: Tensor, group_ids: Tensor) -> LossOutput:
    """Readable reference for `pairwise_ranking_loss`: every ordered pair, one at a time."""
    _check_pairwise(logp, rewards, group_ids)
    terms = []
    for i in range(logp.numel()):
        for j in range(logp.numel()):
            if group_ids[i] == group_ids[j] and rewards[i] > rewards[j]:
                terms.append(-F.logsigmoid(logp[i] - logp[j]))
    loss = torch.stack(terms).mean() if terms else (logp * 0.0).sum()
    return LossOutput(loss=loss, policy_loss=loss.detach(), num_pairs=len(terms))
