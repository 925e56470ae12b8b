"""Metric names, in one place, so the driver, the learner and the tests agree on every key.

Namespaces: ``rollout/`` (sampling and the groups it forms), ``loss/`` (one learner step),
``reward/<component>`` (the reward record), ``val/`` (greedy-policy validation), ``latency/``
(measured stage times of one inference) and ``system/`` (weights, versions, plumbing).
"""

ROLLOUT_PLANS_PER_S = "rollout/plans_per_s"
ROLLOUT_NUM_PLANS = "rollout/num_plans"
ROLLOUT_NUM_GROUPS = "rollout/num_groups"
FRAC_REWARD_ZERO_STD = "rollout/frac_reward_zero_std"
POLICY_LAG = "rollout/policy_lag"

LOSS_TOTAL = "loss/total"
LOSS_POLICY = "loss/policy"
LOSS_ENTROPY = "loss/entropy"
LOSS_CLIP_FRACTION = "loss/clip_fraction"
LOSS_APPROX_KL = "loss/approx_kl"
LOSS_RATIO_MEAN = "loss/ratio_mean"
LOSS_NUM_PAIRS = "loss/num_pairs"
LOSS_GRAD_NORM = "loss/grad_norm"
LOSS_LAST_PASS_APPROX_KL = "loss/last_pass_approx_kl"
"""With update_passes > 1: KL(sampling policy || weights at the last pass), how far the passes moved."""
LOSS_LAST_PASS_CLIP_FRACTION = "loss/last_pass_clip_fraction"

REWARD_PREFIX = "reward/"
REWARD_TOTAL = REWARD_PREFIX + "total"
REWARD_ACCURACY = REWARD_PREFIX + "accuracy"
REWARD_LATENCY = REWARD_PREFIX + "latency"
REWARD_VIOLATION = REWARD_PREFIX + "violation"
REWARD_EFFICIENCY = REWARD_PREFIX + "efficiency"
REWARD_COMPLEXITY = REWARD_PREFIX + "complexity"

VAL_ACCURACY = "val/accuracy"
VAL_VIOLATION_RATE = "val/violation_rate"
VAL_LATENCY_MS = "val/latency_ms"
VAL_REWARD = "val/reward"
VAL_CONTROLLER_OVERHEAD = "val/controller_overhead"

LATENCY_VISION_MS = "latency/vision_ms"
LATENCY_PROJECTOR_MS = "latency/projector_ms"
LATENCY_PREFILL_MS = "latency/prefill_ms"
LATENCY_CONTROLLER_MS = "latency/controller_ms"
LATENCY_DECODE_MS = "latency/decode_ms"
LATENCY_TOTAL_MS = "latency/total_ms"

WEIGHT_SYNC_MS = "system/weight_sync_ms"
POLICY_VERSION = "system/policy_version"

ROLLOUT_ACCURACY = "rollout/accuracy"
ROLLOUT_LATENCY_MS = "rollout/latency_ms"
ROLLOUT_VIOLATION_RATE = "rollout/violation_rate"
ROLLOUT_NUM_SKIPPED = "rollout/num_skipped_samples"
ROLLOUT_NUM_STALE_DROPPED = "rollout/num_stale_dropped"
ROLLOUT_COMPOSITION_ERROR = "rollout/composition_error"
"""--composition_check_every: median of (composed - end-to-end) / end-to-end over the batch's checked plans."""
ROLLOUT_COMPOSITION_ABS_ERROR = "rollout/composition_abs_error"
"""The median of its absolute value (compare it with two end-to-end runs' own spread, docs/shared-rollouts.md)."""
ROLLOUT_NUM_COMPOSITION_CHECKS = "rollout/num_composition_checks"

LEARNER_UPDATE_MS = "system/learner_update_ms"
LEARNER_LR_PREFIX = "system/lr/"
"""One key per optimizer param group: system/lr/stage1, system/lr/stage2, ..."""
WORKER_RESTARTS = "system/worker_restarts"

BUDGET_LOW_MS = "budget/low_ms"
BUDGET_HIGH_MS = "budget/high_ms"
BUDGET_CHEAPEST_MS = "budget/cheapest_plan_ms"
BUDGET_FULL_MS = "budget/full_plan_ms"

LATENCY_ESTIMATE_ERROR_MS = "latency/estimate_error_ms"
"""--latency_mode estimated: mean (estimated - measured) end-to-end ms over a batch."""
LATENCY_ESTIMATE_ABS_ERROR_MS = "latency/estimate_abs_error_ms"
ROLLOUT_ESTIMATE_ERROR_MS = "rollout/epoch_latency_estimate_error_ms"
"""--latency_mode estimated: mean (estimated - measured) ms over all of an epoch's training rollouts."""
ROLLOUT_ESTIMATE_ABS_ERROR_MS = "rollout/epoch_latency_estimate_abs_error_ms"
VAL_ESTIMATE_ERROR_MS = "val/latency_estimate_error_ms"
"""--latency_mode estimated: mean (estimated - measured) ms over a validation pass."""
VAL_ESTIMATE_ABS_ERROR_MS = "val/latency_estimate_abs_error_ms"

REWARD_MISS = REWARD_PREFIX + "miss"
"""-miss_penalty per missed budget (adactrl.reward.RewardConfig.miss_penalty)."""
FRAC_ACCURACY_EQUAL = "rollout/frac_accuracy_equal"
"""Share of groups whose plans all scored the same accuracy: no accuracy signal, only latency."""

LEARNER_RESTARTS = "system/learner_restarts"
"""Times the learner actor was lost and restarted from the newest checkpoint in this run."""
