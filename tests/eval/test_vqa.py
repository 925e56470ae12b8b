import pytest

from adactrl.eval import exact_match, normalize_answer, vqa_score

NORMALIZATION_CASES = [
    # case and whitespace
    ("Yes", "yes"),
    ("  Two \t cats\n", "2 cats"),
    # punctuation next to a space is deleted; elsewhere it becomes a space
    ("hello, world!", "hello world"),
    ("black-and-white", "black and white"),
    ("black - white", "black white"),
    ("t-shirt", "t shirt"),
    ("(left)", "left"),
    ("yes/no", "yes no"),
    # apostrophes and colons are not punctuation here
    ("10:30", "10:30"),
    ("man's", "man's"),
    # periods: deleted unless between digits
    ("yes.", "yes"),
    ("3.5", "3.5"),
    ("it is 2.0.", "it is 2.0"),
    ("u.s.", "us"),
    # a comma between digits deletes all punctuation, so the number stays whole
    ("1,000", "1000"),
    ("2,500 feet-tall", "2500 feettall"),
    # articles
    ("the dog", "dog"),
    ("A cat and an apple", "cat and apple"),
    # number words
    ("Three", "3"),
    ("none", "0"),
    ("ten birds", "10 birds"),
    ("eleven", "eleven"),
    # contractions restored
    ("dont", "don't"),
    ("isnt", "isn't"),
    ("Im", "i'm"),
    ("couldnt've", "couldn't've"),
    ("couldntve", "couldn't've"),
    ("its", "its"),
    # rules together
    ("The dog doesnt have THREE legs!", "dog doesn't have 3 legs"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZATION_CASES)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_normalises_both_sides():
    assert exact_match("The Two dogs.", "2 dogs") == 1.0
    assert exact_match("two dogs", "3 dogs") == 0.0


@pytest.mark.parametrize(
    ("hits", "expected"),
    [
        # 10 answers, `hits` of them match. Leaving out a matching answer leaves hits-1 matches,
        # leaving out another leaves hits; each subset scores min(1, matches / 3).
        (0, 0.0),
        # 1 hit: (1 * 0/3 + 9 * 1/3) / 10 = 3/10
        (1, 0.3),
        # 2 hits: (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
        (2, 0.6),
        # 3 hits: (3 * 2/3 + 7 * 1) / 10 = 9/10
        (3, 0.9),
        # 4 hits: every subset keeps >= 3 matches
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_score_leave_one_out_average(hits, expected):
    answers = ["two"] * hits + ["three"] * (10 - hits)
    assert vqa_score("2", answers) == pytest.approx(expected)


def test_vqa_score_fewer_answers():
    assert vqa_score("Yes.", ["yes"]) == 1.0
    assert vqa_score("no", ["yes"]) == 0.0
    # 2 answers, 1 matching: the bar is min(3, 2 - 1) = 1 match;
    # leave out the match -> 0/1, leave out the other -> 1/1; average (0 + 1) / 2 = 0.5
    assert vqa_score("yes", ["yes", "no"]) == pytest.approx(0.5)
    assert vqa_score("yes", ["yes", "yes"]) == 1.0


def test_vqa_score_rejects_empty_answers():
    with pytest.raises(ValueError, match="empty"):
        vqa_score("yes", [])
    with pytest.raises(TypeError):
        vqa_score("yes", "yes")
