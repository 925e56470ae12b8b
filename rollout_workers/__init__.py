"""Rollout workers: a frozen VLM and a controller copy that sample, run and score plans."""

from rollout_workers.worker import RolloutReceipt, RolloutWorker, load_model

__all__ = ["RolloutReceipt", "RolloutWorker", "load_model"]
