"""GRPO training of the controller: configs, typed records, rollouts, the loss hook, the loop.

Nothing here imports Ray except `adactrl.training.driver`, the orchestration layer that composes
the rollout workers (rollout_workers/) and the learner (learner/) on a Ray cluster.
"""
