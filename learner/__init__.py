"""The central learner: GRPO updates on streamed rollout batches and versioned weights."""

from learner.learner import Learner, LearnerStep, NonFiniteError

__all__ = ["Learner", "LearnerStep", "NonFiniteError"]
