"""One scorer for every answer the product judges: training rewards, validation, profiles and
`adactrl evaluate` score a row with its own dataset's metric (VQA score, or CIDEr-D / 10 for
captions), so a mix of datasets is scored as each dataset's users would score it."""

from __future__ import annotations

from collections.abc import Sequence

from adactrl.eval import CiderD, answer_score


class AnswerScorer:
    """Scores predictions against a row's answers with the metric of the row's family.

    CIDEr-D weighs n-grams by their document frequency over a corpus; the corpus is the caption
    rows of the split being scored (as the coco-caption evaluation uses its split's references).
    A split without captions builds none."""

    def __init__(self, families: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
        from adactrl.data import metric_for_family

        self._metric_for_family = metric_for_family
        if len(families) != len(answers):
            raise ValueError(f"{len(families)} families but {len(answers)} answer lists")
        captions = [list(a) for f, a in zip(families, answers) if metric_for_family(str(f)) == "cider"]
        self.cider = CiderD(captions) if captions else None

    @classmethod
    def for_split(cls, split) -> AnswerScorer:
        """The scorer of a dataset (a `datasets.Dataset` or a list of row dicts); reads its
        answers only when it holds captions, and never decodes an image."""
        from adactrl.data import metric_for_family

        families = [str(f) for f in _column(split, "family")]
        captions = [i for i, f in enumerate(families) if metric_for_family(f) == "cider"]
        if not captions:
            return cls([], [])
        answers = _column(split.select(captions) if hasattr(split, "select") else [split[i] for i in captions], "answers")
        return cls([families[i] for i in captions], answers)

    def __call__(self, prediction: str, answers: Sequence[str], family: str) -> float:
        metric = self._metric_for_family(str(family))
        if metric == "cider" and self.cider is None:
            raise ValueError(f"a caption row (family {family!r}) outside the split this scorer was built for")
        return answer_score(prediction, answers, metric, cider=self.cider)


def _column(rows, name: str) -> list:
    """A column of a `datasets.Dataset` (without decoding the other columns) or of a list of dicts;
    rows without the column give "" (the synthetic set's rows always have a family)."""
    if hasattr(rows, "column_names"):
        return list(rows[name]) if name in rows.column_names else [""] * len(rows)
    return [row.get(name, "") for row in rows]
