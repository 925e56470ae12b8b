import dataclasses
import math

import numpy as np
import pytest
import torch

from adactrl.controller import Controller, ControllerConfig
from adactrl.knobs import KnobSpace
from adactrl.metrics import (
    FRAC_REWARD_ZERO_STD,
    LOSS_NUM_PAIRS,
    LOSS_LAST_PASS_APPROX_KL,
    LOSS_LAST_PASS_CLIP_FRACTION,
    LOSS_RATIO_MEAN,
    POLICY_VERSION,
    ROLLOUT_ACCURACY,
    ROLLOUT_COMPOSITION_ABS_ERROR,
    ROLLOUT_COMPOSITION_ERROR,
    ROLLOUT_NUM_COMPOSITION_CHECKS,
    ROLLOUT_NUM_GROUPS,
    ROLLOUT_NUM_STALE_DROPPED,
    ROLLOUT_VIOLATION_RATE,
)
from adactrl.reward import Reward
from adactrl.training.config import LearnerConfig, LossConfig
from adactrl.training.loss import BatchTensors
from adactrl.training.records import CHECKED_TOTAL, COMPOSED_TOTAL, RolloutBatch, RolloutRecord
from adactrl.training.summary import dataset_metric
import learner.learner as learner_module
from learner import Learner, NonFiniteError
from learner.learner import rollout_metrics

D = 16
SPACE = KnobSpace.from_model(num_layers=16, default_top_k=8)


def make_controller(seed: int = 0) -> Controller:
    return Controller(ControllerConfig(d_model=D, seed=seed), SPACE)


def make_record(
    controller: Controller, sample_id: int, budget: float, reward: float, *, version: int = 0, action_seed: int = 0,
    old_logp_shift: float = 0.0,
) -> RolloutRecord:
    """A record whose old_logp is the controller's own log-prob (+ shift), as a worker at `version` would store."""
    g = np.random.default_rng([sample_id, action_seed])
    lang = g.standard_normal(D).astype(np.float32)
    token = g.standard_normal(D).astype(np.float32)
    actions = tuple(int(g.integers(0, n)) for n in SPACE.sizes)
    with torch.no_grad():
        logp, _ = controller.log_prob(torch.tensor([actions]), torch.from_numpy(lang)[None],
                                      torch.tensor([budget]), torch.from_numpy(token)[None])  # fmt: skip
    return RolloutRecord(
        sample_id=sample_id, budget_ms=budget, actions=actions, old_logp=float(logp) + old_logp_shift,
        language_feature=lang, latency_token=token, accuracy=0.0, latency_ms={"total": 10.0, "controller": 0.1},
        reward=Reward(total=reward, accuracy=reward, latency=0.0, violation=0.0, efficiency=0.0, complexity=0.0),
        policy_version=version, worker_index=0,
    )  # fmt: skip


def batch_of(records, request_id: int = 0, version: int = 0) -> RolloutBatch:
    return RolloutBatch(0, request_id, tuple(records), (), version, 0, 1.0)


def params(controller: Controller) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in controller.named_parameters()}


def test_groups_by_sample_and_budget_with_hand_computed_advantages():
    c = make_controller()
    # group (0, 50): rewards 1, 2, 3 -> mean 2, population std sqrt(2/3): advantages -1.2247, 0, 1.2247
    # group (0, 80): same sample, other budget: rewards 4, 4 -> all equal: advantages 0 (zero-std)
    # group (1, 50): a single member -> advantage 0 (zero-std)
    records = [make_record(c, 0, 50.0, r, action_seed=i) for i, r in enumerate((1.0, 2.0, 3.0))]
    records += [make_record(c, 0, 80.0, 4.0, action_seed=i) for i in range(2)]
    records += [make_record(c, 1, 50.0, 9.0)]
    tensors = BatchTensors.from_records(records)
    assert tensors.group_ids.tolist() == [0, 0, 0, 1, 1, 2]
    expected = torch.tensor([-1.224745, 0.0, 1.224745, 0.0, 0.0, 0.0])
    torch.testing.assert_close(tensors.advantages, expected, atol=1e-5, rtol=0)
    assert (tensors.groups.num_groups, tensors.groups.num_zero_std) == (3, 2)

    step = Learner(c, LearnerConfig()).update(batch_of(records))
    assert step.updated and step.version == 1
    assert step.metrics[ROLLOUT_NUM_GROUPS] == 3
    assert step.metrics[FRAC_REWARD_ZERO_STD] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("scale", "expected"), [("group", 1.224745), ("batch", 1.581139), ("none", 1.0)])
def test_learner_scales_advantages_as_configured(monkeypatch, scale, expected):
    """Rewards 1, 2, 3 in one group and a zero-std pair: centred (-1, 0, 1, 0, 0), divided by the
    group's std sqrt(2/3), the batch's root mean square sqrt(2/5), or nothing."""
    c = make_controller()
    records = [make_record(c, 0, 50.0, r, action_seed=i) for i, r in enumerate((1.0, 2.0, 3.0))]
    records += [make_record(c, 1, 50.0, 4.0, action_seed=i) for i in range(2)]
    seen = []
    real = learner_module.compute_loss
    monkeypatch.setattr(learner_module, "compute_loss", lambda **kw: seen.append(kw["batch_tensors"]) or real(**kw))
    Learner(c, LearnerConfig(loss=LossConfig(advantage_scale=scale))).update(batch_of(records))
    torch.testing.assert_close(seen[0].advantages, torch.tensor([-expected, 0.0, expected, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_all_equal_rewards_step_only_on_entropy_and_stay_finite():
    c = make_controller()
    records = [make_record(c, 0, 50.0, 0.5, action_seed=i) for i in range(4)]
    learner = Learner(c, LearnerConfig(loss=LossConfig(entropy_coef=0.0)))
    before = params(c)
    step = learner.update(batch_of(records))
    # Advantages are all 0 and there is no entropy term: the gradient is exactly 0, Adam does not move.
    assert step.metrics[FRAC_REWARD_ZERO_STD] == 1.0
    assert all(math.isfinite(v) for v in step.metrics.values())
    assert all(torch.equal(before[k], v) for k, v in params(c).items())


def test_version_bumps_once_per_update_and_weights_carry_it():
    c = make_controller()
    learner = Learner(c, LearnerConfig())
    assert learner.weights().version == 0
    for i in range(3):
        records = [make_record(c, i, 50.0, r, version=i, action_seed=r) for r in range(4)]
        step = learner.update(batch_of(records, request_id=i, version=i))
        assert step.version == i + 1 == learner.version
        assert step.metrics[POLICY_VERSION] == i + 1
    weights = learner.weights()
    assert weights.version == 3
    assert all(torch.equal(weights.state[k], v) for k, v in c.state_dict().items())
    weights.state["stage1.tier_head.bias"] += 1.0  # a published copy, not the learner's tensors
    assert not torch.equal(weights.state["stage1.tier_head.bias"], c.stage1.tier_head.bias)


def test_stale_records_get_the_ratio_and_too_stale_ones_are_dropped():
    c = make_controller()
    learner = Learner(c, LearnerConfig(max_policy_lag=1))
    learner.version = 3  # as after three updates
    # lag 1 (version 2): kept, sampled under a policy that gave these actions log-prob 0.3 less -> ratio e^0.3
    fresh = [make_record(c, 0, 50.0, float(r), version=2, action_seed=r, old_logp_shift=-0.3) for r in range(4)]
    # lag 3 (version 0): beyond max_policy_lag, dropped and counted
    stale = [make_record(c, 1, 50.0, float(r), version=0, action_seed=r) for r in range(4)]
    step = learner.update(batch_of(fresh + stale, version=2))
    assert step.num_stale_dropped == 4 and step.metrics[ROLLOUT_NUM_STALE_DROPPED] == 4
    assert step.metrics[ROLLOUT_NUM_GROUPS] == 1  # only the fresh group
    assert step.metrics[LOSS_RATIO_MEAN] == pytest.approx(math.exp(0.3), rel=1e-4)
    assert step.version == 4

    before = params(c)
    only_stale = learner.update(batch_of(stale, version=0))
    assert not only_stale.updated and only_stale.version == 4
    assert all(torch.equal(before[k], v) for k, v in params(c).items())


def test_nan_reward_or_loss_stops_the_step_and_changes_nothing(monkeypatch):
    c = make_controller()
    learner = Learner(c, LearnerConfig())
    good = [make_record(c, 0, 50.0, float(r), action_seed=r) for r in range(4)]
    learner.update(batch_of(good))
    before, optimizer_state = params(c), learner.state_dict()["optimizer"]

    bad_reward = good[:3] + [make_record(c, 0, 50.0, float("nan"), action_seed=9)]
    with pytest.raises(NonFiniteError, match="non-finite rewards"):
        learner.update(batch_of(bad_reward))
    poisoned = make_record(c, 0, 50.0, 2.0, action_seed=7)
    poisoned.language_feature[:] = np.nan
    with pytest.raises(NonFiniteError, match="non-finite language_feature"):
        learner.update(batch_of(good[:3] + [poisoned]))
    real_loss = learner_module.compute_loss

    def nan_loss(**kwargs):
        out = real_loss(**kwargs)
        return dataclasses.replace(out, loss=out.loss * float("nan"))

    monkeypatch.setattr(learner_module, "compute_loss", nan_loss)
    with pytest.raises(NonFiniteError, match="loss is nan"):
        learner.update(batch_of(good))

    assert learner.version == 1
    assert all(torch.equal(before[k], v) for k, v in params(c).items())
    after_state = learner.state_dict()["optimizer"]["state"]
    assert all(torch.equal(optimizer_state["state"][i]["exp_avg"], s["exp_avg"]) for i, s in after_state.items())


def test_update_passes_take_that_many_adam_steps_and_publish_one_version(monkeypatch):
    c = make_controller()
    records = [make_record(c, 0, 50.0, float(r), action_seed=r) for r in range(4)]
    ratios = []
    real = learner_module.compute_loss

    def spy(**kwargs):
        out = real(**kwargs)
        ratios.append(float(out.ratio_mean))
        return out

    monkeypatch.setattr(learner_module, "compute_loss", spy)
    learner = Learner(c, LearnerConfig(update_passes=3))
    assert LearnerConfig().update_passes == 4  # the default, measured in docs/controller-quality.md
    step = learner.update(batch_of(records))
    assert step.version == 1 == learner.version
    assert len(ratios) == 3
    assert ratios[0] == pytest.approx(1.0)  # on-policy at the first pass
    assert ratios[1] != pytest.approx(1.0) and ratios[2] != pytest.approx(1.0)  # later passes see the moved policy
    assert step.metrics[LOSS_RATIO_MEAN] == pytest.approx(1.0)  # the first pass's metrics
    assert step.metrics[LOSS_LAST_PASS_APPROX_KL] > 0 and 0 <= step.metrics[LOSS_LAST_PASS_CLIP_FRACTION] <= 1
    assert learner.optimizer.state_dict()["state"][0]["step"] == 3


def test_a_later_pass_that_turns_non_finite_leaves_weights_and_optimizer_as_before(monkeypatch):
    c = make_controller()
    learner = Learner(c, LearnerConfig(update_passes=3))
    good = [make_record(c, 0, 50.0, float(r), action_seed=r) for r in range(4)]
    learner.update(batch_of(good))
    before, optimizer_state = params(c), learner.state_dict()["optimizer"]
    calls = []
    real = learner_module.compute_loss

    def nan_at_third(**kwargs):
        out = real(**kwargs)
        calls.append(1)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if len(calls) == 3 else out

    monkeypatch.setattr(learner_module, "compute_loss", nan_at_third)
    with pytest.raises(NonFiniteError, match="loss is nan"):
        learner.update(batch_of(good))
    assert len(calls) == 3 and learner.version == 1
    assert all(torch.equal(before[k], v) for k, v in params(c).items())
    after = learner.state_dict()["optimizer"]["state"]
    assert all(torch.equal(optimizer_state["state"][i]["exp_avg"], s["exp_avg"]) for i, s in after.items())
    assert all(float(optimizer_state["state"][i]["step"]) == float(s["step"]) for i, s in after.items())


def test_update_passes_are_checked():
    with pytest.raises(ValueError, match="update_passes must be >= 1"):
        LearnerConfig(update_passes=0)


@pytest.mark.parametrize("train_encoder", [False, True])
def test_budget_encoder_trains_only_with_the_flag(train_encoder):
    c = make_controller()
    learner = Learner(c, LearnerConfig(train_budget_encoder=train_encoder, lr=1e-2))
    before = params(c)
    records = [make_record(c, 0, 50.0 + 10 * r, float(r), action_seed=r) for r in range(4)]
    records += [make_record(c, 0, 50.0 + 10 * r, float(-r), action_seed=r + 10) for r in range(4)]
    learner.update(batch_of(records))
    for name, value in params(c).items():
        changed = not torch.equal(before[name], value)
        if name.startswith("budget_encoder."):
            assert changed == train_encoder, name
        elif name.startswith(("stage1.tier_head", "stage2.top_k_head")):
            assert changed, name


def test_stage1_learns_at_the_ratio():
    learner = Learner(make_controller(), LearnerConfig(lr=1e-3, stage1_lr_ratio=0.1))
    lrs = {g["name"]: g["lr"] for g in learner.optimizer.param_groups}
    assert lrs == {"stage1": pytest.approx(1e-4), "stage2": pytest.approx(1e-3)}


def test_pairwise_loss_counts_pairs():
    c = make_controller()
    learner = Learner(c, LearnerConfig(loss=LossConfig(loss="pairwise")))
    # one group with rewards 1, 2, 2: pairs (2 > 1) twice, the tie skipped -> 2 pairs
    records = [make_record(c, 0, 50.0, r, action_seed=i) for i, r in enumerate((1.0, 2.0, 2.0))]
    step = learner.update(batch_of(records))
    assert step.metrics[LOSS_NUM_PAIRS] == 2 and step.updated


def test_state_dict_round_trip_continues_identically():
    def run(learner, c, seeds):
        for s in seeds:
            learner.update(batch_of([make_record(c, s, 50.0, float(r * s % 3), action_seed=r) for r in range(4)]))

    a_ctrl = make_controller()
    a = Learner(a_ctrl, LearnerConfig())
    run(a, a_ctrl, [1, 2])
    b_ctrl = make_controller()
    b_ctrl.load_state_dict(a_ctrl.state_dict())
    b = Learner(b_ctrl, LearnerConfig())
    b.load_state_dict(a.state_dict())
    assert b.version == 2
    run(a, a_ctrl, [3, 4])
    run(b, b_ctrl, [3, 4])
    for k, v in a_ctrl.state_dict().items():
        torch.testing.assert_close(b_ctrl.state_dict()[k], v, rtol=0, atol=0)


def test_scheduler_lowers_the_lr_on_a_plateau():
    learner = Learner(make_controller(), LearnerConfig(lr=1e-3, plateau_patience=0, plateau_factor=0.5))
    learner.scheduler_step(1.0)
    learner.scheduler_step(0.5)  # worse: with patience 0 the lr halves
    assert learner.optimizer.param_groups[1]["lr"] == pytest.approx(5e-4)
    with pytest.raises(NonFiniteError):
        learner.scheduler_step(float("nan"))


def test_rollout_metrics_of_a_mixed_batch_are_also_reported_per_dataset():
    c = make_controller()
    text = [dataclasses.replace(make_record(c, i, 50.0, 1.0), family="text_vqa", accuracy=1.0) for i in range(2)]
    caption = dataclasses.replace(make_record(c, 2, 50.0, 0.1), family="coco_caption", accuracy=0.1,
                                  latency_ms={"total": 70.0, "controller": 0.1})  # fmt: skip
    metrics = rollout_metrics(batch_of([*text, caption]))
    assert metrics[ROLLOUT_ACCURACY] == pytest.approx(0.7)  # (1 + 1 + 0.1) / 3
    assert metrics[dataset_metric(ROLLOUT_ACCURACY, "text_vqa")] == 1.0
    assert metrics[dataset_metric(ROLLOUT_ACCURACY, "coco_caption")] == pytest.approx(0.1)
    assert metrics[dataset_metric(ROLLOUT_VIOLATION_RATE, "coco_caption")] == 1.0  # 70 ms > 50 ms
    # one dataset: no per-dataset keys (its means are the batch's)
    assert not [k for k in rollout_metrics(batch_of(text)) if "/text_vqa/" in k]


def test_composition_error_over_the_checked_plans():
    c = make_controller()
    checked = [dataclasses.replace(make_record(c, i, 50.0, 1.0), latency_ms={"total": t, COMPOSED_TOTAL: t, CHECKED_TOTAL: e})
               for i, (t, e) in enumerate([(11.0, 10.0), (9.0, 10.0), (20.0, 16.0)])]  # fmt: skip
    metrics = rollout_metrics(batch_of([*checked, make_record(c, 3, 50.0, 1.0)]))
    assert metrics[ROLLOUT_NUM_COMPOSITION_CHECKS] == 3.0  # the unchecked record does not count
    assert metrics[ROLLOUT_COMPOSITION_ERROR] == pytest.approx(0.1)  # median of +0.1, -0.1, +0.25
    assert metrics[ROLLOUT_COMPOSITION_ABS_ERROR] == pytest.approx(0.1)
    assert ROLLOUT_COMPOSITION_ERROR not in rollout_metrics(batch_of([make_record(c, 3, 50.0, 1.0)]))
