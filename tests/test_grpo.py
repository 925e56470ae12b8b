import math

import pytest
import torch

from adactrl.grpo import (
    count_equal_groups,
    group_advantages,
    group_advantages_loop,
    grpo_loss,
    pairwise_ranking_loss,
    pairwise_ranking_loss_loop,
)
from adactrl.metrics import FRAC_ACCURACY_EQUAL, FRAC_REWARD_ZERO_STD, LOSS_CLIP_FRACTION, LOSS_POLICY, LOSS_TOTAL

# Three groups with arbitrary ids: 10 -> [1, 2, 3], 3 -> [5, 5] (all equal), 42 -> [7] (alone).
REWARDS = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 7.0])
GROUP_IDS = torch.tensor([10, 10, 10, 3, 3, 42])


@pytest.mark.parametrize("fn", [group_advantages, group_advantages_loop])
def test_group_advantages_by_hand(fn):
    # group 10: mean 2, population std sqrt((1 + 0 + 1) / 3) = sqrt(2/3) = 0.816497,
    #   advantages (-1, 0, 1) / 0.816497 = (-1.224745, 0, 1.224745)
    # group 3: std 0 -> advantages exactly 0; group 42: one member -> 0. Both count as zero-std.
    stats = fn(REWARDS, GROUP_IDS)
    expected = torch.tensor([-1.224745, 0.0, 1.224745, 0.0, 0.0, 0.0])
    torch.testing.assert_close(stats.advantages, expected, atol=1e-5, rtol=0)
    assert stats.advantages[3:].eq(0).all()
    assert (stats.num_groups, stats.num_zero_std) == (3, 2)
    assert stats.frac_reward_zero_std == pytest.approx(2 / 3)
    assert stats.to_metrics()[FRAC_REWARD_ZERO_STD] == pytest.approx(2 / 3)


def test_group_advantages_batch_and_none_scales_by_hand():
    # Centred rewards (-1, 0, 1, 0, 0, 0); "none" keeps them, "batch" divides by their root mean
    # square over the batch, sqrt(2 / 6) = 0.577350. Zero-std groups stay exactly 0 under both.
    none = group_advantages(REWARDS, GROUP_IDS, scale="none")
    torch.testing.assert_close(none.advantages, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    batch = group_advantages(REWARDS, GROUP_IDS, scale="batch")
    torch.testing.assert_close(batch.advantages, torch.tensor([-1.732051, 0.0, 1.732051, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    assert (batch.num_groups, batch.num_zero_std) == (none.num_groups, none.num_zero_std) == (3, 2)


def test_batch_scale_keeps_a_small_reward_gap_small():
    """Group 0 separates a right from a wrong answer (gap 0.8), group 1 two equally right plans
    by latency alone (gap 0.05): per-group std makes both gaps count alike, the batch scale
    keeps them 16:1."""
    rewards = torch.tensor([1.0, 0.2, 1.0, 0.95])
    group_ids = torch.tensor([0, 0, 1, 1])
    per_group = group_advantages(rewards, group_ids, scale="group").advantages
    torch.testing.assert_close(per_group[0], per_group[2], atol=1e-4, rtol=0)
    batch = group_advantages(rewards, group_ids, scale="batch").advantages
    assert batch[0] / batch[2] == pytest.approx(16.0)
    torch.testing.assert_close(batch[[0, 2]], -batch[[1, 3]])


def test_group_advantages_all_equal_with_rounding():
    # 0.1 * 3 / 3 is not exactly 0.1 in floating point; the group must still be zero-std.
    stats = group_advantages(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([0, 0, 0]))
    assert stats.advantages.eq(0).all() and stats.num_zero_std == 1
    assert torch.isfinite(stats.advantages).all()


def test_group_advantages_rejects_bad_inputs():
    with pytest.raises(ValueError, match="integer"):
        group_advantages(REWARDS, GROUP_IDS.float())
    with pytest.raises(ValueError, match=r"\[N\]"):
        group_advantages(REWARDS, GROUP_IDS[:3])
    with pytest.raises(ValueError, match=r"scale must be one of \['group', 'batch', 'none'\], got 'rank'"):
        group_advantages(REWARDS, GROUP_IDS, scale="rank")


def test_group_advantages_loop_equivalence_random():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 60, (1,), generator=gen))
        group_ids = torch.randint(0, 12, (n,), generator=gen)
        # Rewards from a small set so that ties and all-equal groups occur.
        rewards = torch.randint(0, 3, (n,), generator=gen).double() * 0.5
        fast = group_advantages(rewards, group_ids)
        slow = group_advantages_loop(rewards, group_ids)
        torch.testing.assert_close(fast.advantages, slow.advantages)
        assert (fast.num_groups, fast.num_zero_std) == (slow.num_groups, slow.num_zero_std)


def test_grpo_loss_on_policy_equals_reinforce():
    gen = torch.Generator().manual_seed(1)
    advantages = torch.randn(8, generator=gen)
    logp = torch.randn(8, generator=gen).requires_grad_()
    out = grpo_loss(logp=logp, old_logp=logp.detach(), advantages=advantages, clip_eps=0.2)
    (grad,) = torch.autograd.grad(out.loss, logp)
    reference = logp.detach().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(-(advantages * reference).mean(), reference)
    torch.testing.assert_close(grad, ref_grad)
    # ratio is 1 everywhere: nothing clipped, no KL, loss = -mean(A)
    assert out.loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-6)
    assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == 0.0
    assert out.ratio_mean.item() == 1.0


def test_grpo_loss_stale_records_clip():
    # old_logp = 0, ratios r = (1.5, 0.5, 1.1, 0.7), A = (1, 1, -1, -1), clip_eps = 0.2:
    #   0: min(1.5, 1.2) = 1.2  (clipped: gradient cut)
    #   1: min(0.5, 0.8) = 0.5  (unclipped)
    #   2: min(-1.1, -1.1) = -1.1 (inside the band)
    #   3: min(-0.7, -0.8) = -0.8 (clipped: gradient cut)
    # loss = -(1.2 + 0.5 - 1.1 - 0.8) / 4 = 0.05; clip fraction 2/4; ratio mean 3.8/4 = 0.95
    # approx_kl = mean((r - 1) - ln r) = (0.094535 + 0.193147 + 0.004690 + 0.056675) / 4 = 0.087262
    # d loss / d logp_i = -A_i * r_i / 4 where unclipped: (0, -0.125, 0.275, 0)
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    logp = ratios.log().requires_grad_()
    out = grpo_loss(
        logp=logp, old_logp=torch.zeros(4), advantages=torch.tensor([1.0, 1.0, -1.0, -1.0]),
        clip_eps=0.2,
    )
    assert out.loss.item() == pytest.approx(0.05, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    assert out.ratio_mean.item() == pytest.approx(0.95)
    assert out.approx_kl.item() == pytest.approx(0.087262, abs=1e-5)
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.125, 0.275, 0.0]))


def test_grpo_loss_gradient_direction():
    # Descending the loss raises logp where A > 0 and lowers it where A < 0.
    logp = torch.tensor([-1.0, -2.0, -0.5]).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, 0.0])
    out = grpo_loss(logp=logp, old_logp=logp.detach() + 0.05, advantages=advantages, clip_eps=0.2)
    (grad,) = torch.autograd.grad(out.loss, logp)
    assert grad[0] < 0 and grad[1] > 0 and grad[2] == 0


def test_grpo_loss_entropy_bonus_and_metrics():
    # on-policy, A = (1, -1): policy loss -mean(1, -1) = 0; entropy mean (1 + 3) / 2 = 2;
    # loss = 0 - 0.1 * 2 = -0.2
    logp = torch.tensor([-1.0, -1.0])
    out = grpo_loss(
        logp=logp, old_logp=logp, advantages=torch.tensor([1.0, -1.0]), clip_eps=0.2,
        entropy=torch.tensor([1.0, 3.0]), entropy_coef=0.1,
    )
    assert out.loss.item() == pytest.approx(-0.2)
    metrics = out.to_metrics()
    assert metrics[LOSS_TOTAL] == pytest.approx(-0.2) and metrics[LOSS_POLICY] == 0.0
    assert metrics["loss/entropy"] == 2.0 and metrics[LOSS_CLIP_FRACTION] == 0.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_grpo_loss_rejects_bad_inputs():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(logp=x, old_logp=x, advantages=x, clip_eps=0.0)
    with pytest.raises(ValueError, match="same shape"):
        grpo_loss(logp=x, old_logp=x[:2], advantages=x, clip_eps=0.2)
    with pytest.raises(ValueError, match="non-empty"):
        grpo_loss(logp=x[:0], old_logp=x[:0], advantages=x[:0], clip_eps=0.2)


@pytest.mark.parametrize("fn", [pairwise_ranking_loss, pairwise_ranking_loss_loop])
def test_pairwise_three_member_group_by_hand(fn):
    # rewards (3, 1, 2): pairs (i beats j) = (0, 1), (0, 2), (2, 1).
    # logp (0, 1, 0.5): margins -1, -0.5, -0.5; -log sigmoid(m) = log(1 + e^-m):
    #   log(1 + e) = 1.313262, log(1 + e^0.5) = 0.974077 (twice); mean 3.261416 / 3 = 1.087139
    rewards = torch.tensor([3.0, 1.0, 2.0])
    group_ids = torch.tensor([0, 0, 0])
    out = fn(logp=torch.tensor([0.0, 1.0, 0.5]), rewards=rewards, group_ids=group_ids)
    assert out.loss.item() == pytest.approx(1.087139, abs=1e-5)
    assert out.num_pairs == 3
    # At logp = 0 each term's gradient is -1/2 for the winner, +1/2 for the loser, / 3 pairs:
    #   logp0 wins twice -> -1/3; logp1 loses twice -> +1/3; logp2 wins once, loses once -> 0
    logp = torch.zeros(3, requires_grad=True)
    (grad,) = torch.autograd.grad(fn(logp=logp, rewards=rewards, group_ids=group_ids).loss, logp)
    torch.testing.assert_close(grad, torch.tensor([-1 / 3, 1 / 3, 0.0]))


def test_pairwise_skips_ties_and_other_groups():
    # group 0: (2, 2) tie -> no pair; group 1: (1, 0) -> one pair with margin 0.3 - 0.1 = 0.2;
    # a cross-group pair (reward 2 vs 0) must not count. loss = log(1 + e^-0.2) = 0.598139
    out = pairwise_ranking_loss(
        logp=torch.tensor([5.0, -5.0, 0.3, 0.1]), rewards=torch.tensor([2.0, 2.0, 1.0, 0.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
    )
    assert out.num_pairs == 1
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6)


def test_pairwise_no_pairs_is_zero_and_backward_works():
    logp = torch.tensor([0.2, -0.4, 1.0], requires_grad=True)
    out = pairwise_ranking_loss(
        logp=logp, rewards=torch.tensor([1.0, 1.0, 3.0]), group_ids=torch.tensor([0, 0, 1])
    )
    assert out.loss.item() == 0.0 and out.num_pairs == 0
    out.loss.backward()
    assert logp.grad is not None and logp.grad.eq(0).all()


def test_pairwise_loop_equivalence_random():
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        n = int(torch.randint(1, 25, (1,), generator=gen))
        group_ids = torch.randint(0, 4, (n,), generator=gen)
        rewards = torch.randint(0, 4, (n,), generator=gen).double()
        logp = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
        fast = pairwise_ranking_loss(logp=logp, rewards=rewards, group_ids=group_ids)
        slow = pairwise_ranking_loss_loop(logp=logp, rewards=rewards, group_ids=group_ids)
        assert fast.num_pairs == slow.num_pairs
        torch.testing.assert_close(fast.loss, slow.loss)
        (g_fast,) = torch.autograd.grad(fast.loss, logp)
        (g_slow,) = torch.autograd.grad(slow.loss, logp)
        torch.testing.assert_close(g_fast, g_slow)


def test_count_equal_groups_by_hand():
    # group 0: accuracies 1, 1, 1 -> equal; group 1: 0, 1 -> not; group 2: 0.5 alone -> equal
    accuracy = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 2])
    assert count_equal_groups(accuracy, group_ids) == 2
    stats = group_advantages(torch.tensor([0.9, 1.0, 1.1, 0.0, 1.0, 0.5]), group_ids)
    metrics = stats.with_accuracy_equal(accuracy, group_ids).to_metrics()
    # rewards differ within groups 0 and 1 (latency), so only the single-member group is zero-std
    assert metrics[FRAC_REWARD_ZERO_STD] == pytest.approx(1 / 3)
    assert metrics[FRAC_ACCURACY_EQUAL] == pytest.approx(2 / 3)
