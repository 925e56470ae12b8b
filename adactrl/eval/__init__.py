"""Scoring of model outputs: the standard VQA accuracy with its answer normalisation, and CIDEr-D
for captions; `answer_score` puts either on [0, 1] for the reward's accuracy term."""

from __future__ import annotations

from collections.abc import Sequence

from adactrl.eval.cider import CIDER_MAX, CiderD, ptb_tokenize
from adactrl.eval.vqa import exact_match, normalize_answer, vqa_score

METRICS: tuple[str, ...] = ("vqa", "cider")

__all__ = ["CIDER_MAX", "METRICS", "CiderD", "answer_score", "exact_match", "normalize_answer", "ptb_tokenize",
           "vqa_score"]  # fmt: skip


def answer_score(prediction: str, answers: Sequence[str], metric: str = "vqa", *, cider: CiderD | None = None) -> float:
    """One prediction scored by its dataset's metric (adactrl.data.metric_for_family), in [0, 1].

    'vqa': the VQA accuracy. 'cider': CIDEr-D / CIDER_MAX against the reference captions, with
    the document frequencies of `cider`'s corpus (build it once from the split's references)."""
    if metric == "vqa":
        return vqa_score(prediction, answers)
    if metric == "cider":
        if cider is None:
            raise ValueError("metric 'cider' needs cider=CiderD(corpus), the split's reference captions per image")
        return cider.score(prediction, answers) / CIDER_MAX
    raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
