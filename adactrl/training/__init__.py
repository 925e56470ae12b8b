"""GRPO training of the controller: configs, typed records, rollouts, the loss hook, the loop.

Nothing here imports Ray, `learner` or `rollout_workers`: `adactrl.orchestration` composes them
with this loop, in process or on a Ray cluster.
"""
