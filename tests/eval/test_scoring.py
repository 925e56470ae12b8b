import pytest

from adactrl.eval import CIDER_MAX, CiderD, vqa_score
from adactrl.eval.scoring import AnswerScorer

CAPTIONS = [["a cat on a mat", "a cat sitting on a mat"], ["a red bus on the street", "a bus parked on a street"]]
ROWS = [
    {"family": "text_vqa", "answers": ["stop"] * 10},
    {"family": "coco_caption", "answers": CAPTIONS[0]},
    {"family": "coco_caption", "answers": CAPTIONS[1]},
    {"family": "color", "answers": ["red"]},
]


def test_each_row_is_scored_by_its_datasets_metric():
    scorer = AnswerScorer.for_split(ROWS)
    assert scorer("stop", ROWS[0]["answers"], "text_vqa") == vqa_score("stop", ROWS[0]["answers"]) == 1.0
    assert scorer("red", ["red"], "color") == 1.0  # synthetic families use the VQA score
    # a caption: CIDEr-D over the split's captions only, divided by its maximum
    expected = CiderD(CAPTIONS).score("a cat on a mat", CAPTIONS[0]) / CIDER_MAX
    assert scorer("a cat on a mat", CAPTIONS[0], "coco_caption") == pytest.approx(expected)
    assert 0 < expected <= 1


def test_a_split_without_captions_builds_no_corpus_and_refuses_a_caption():
    scorer = AnswerScorer.for_split([ROWS[0], ROWS[3]])
    assert scorer.cider is None
    with pytest.raises(ValueError, match="caption row"):
        scorer("a cat", CAPTIONS[0], "coco_caption")
