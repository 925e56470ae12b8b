"""Scoring of model outputs: the standard VQA accuracy and its answer normalisation."""

from adactrl.eval.vqa import exact_match, normalize_answer, vqa_score

__all__ = ["exact_match", "normalize_answer", "vqa_score"]
