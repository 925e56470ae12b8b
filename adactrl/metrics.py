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
