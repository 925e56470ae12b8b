import math

import pytest

from adactrl.eval import CIDER_MAX, CiderD, answer_score, ptb_tokenize, vqa_score

# What pycocoevalcap 1.2's PTBTokenizer (Stanford CoreNLP 3.4.1 PTBTokenizer -preserveLines
# -lowerCase, then its punctuation list dropped) printed for each caption, run with Java.
PTB_CASES = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs don't like the cat's toy!", "two dogs do n't like the cat 's toy"),
    ('A (red) stop-sign, next to "Main St."', "a -lrb- red -rrb- stop-sign next to main st."),
    ("The  man's 3.5 ft. tall; she'll say: hello...", "the man 's 3.5 ft. tall she 'll say hello"),
    ("A t-shirt costs $1,000 -- wow?", "a t-shirt costs $ 1,000 wow"),
    ("There are 2 people at 10:30 a.m. in the U.S.", "there are 2 people at 10:30 a.m. in the u.s."),
    ("I can't won't it's they're we've you'd I'm", "i ca n't wo n't it 's they 're we 've you 'd i 'm"),
    ("A woman's umbrella & a man's hat / coat", "a woman 's umbrella & a man 's hat / coat"),
    ("'quoted' text and `back` ticks", "quoted text and back ticks"),
    ("Kids' toys and the boys' room", "kids toys and the boys room"),
    ("cannot gonna wanna", "can not gon na wan na"),
    ("An ice-cream cone, 50% off #1 @home", "an ice-cream cone 50 % off # 1 @home"),
    ('A sign reading "STOP" in front of it.', "a sign reading stop in front of it"),
    ("a {curly} [square] <angle>", "a -lcb- curly -rcb- -lsb- square -rsb- <angle>"),
]

# A worked example with several references per image (3 to 5), as COCO has them.
REFERENCES = [
    ["A red stop sign on a pole.", "A stop sign next to a street.", "The sign says stop.", "A red sign at a corner.",
     "A stop sign in the sun."],
    ["Two dogs play in the grass.", "Dogs running on a lawn.", "Two brown dogs outside.", "A pair of dogs playing.",
     "Two dogs on green grass."],
    ["A man rides a bike.", "A person on a bicycle.", "A cyclist on the road.", "A man riding his bike down a street.",
     "Someone biking."],
    ["A cat sleeping on a couch.", "A cat on the sofa.", "The cat is asleep on a couch."],
]  # fmt: skip
CANDIDATES = ["A red stop sign on a street pole.", "Two dogs playing on the grass.", "A man riding a bike on the road.",
              "A dog sitting on a couch."]  # fmt: skip
# pycocoevalcap 1.2: Cider().compute_score(gts, res) on the PTBTokenizer output of the above.
REFERENCE_SCORES = [2.833368675795901, 1.833503965950169, 1.3843029060093506, 1.2992266967370327]
REFERENCE_CORPUS_SCORE = 1.8376005611231132


@pytest.mark.parametrize(("caption", "tokens"), PTB_CASES)
def test_ptb_tokenize_matches_the_java_tokenizer(caption, tokens):
    assert " ".join(ptb_tokenize(caption)) == tokens


def test_cider_d_matches_the_reference_on_a_worked_example():
    scorer = CiderD(REFERENCES)
    scores = [scorer.score(c, refs) for c, refs in zip(CANDIDATES, REFERENCES)]
    assert scores == pytest.approx(REFERENCE_SCORES, rel=1e-12)
    assert scorer.corpus_score(CANDIDATES, REFERENCES) == pytest.approx(REFERENCE_CORPUS_SCORE, rel=1e-12)


def test_cider_d_matches_pycocoevalcap_when_installed():
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    gts = {i: [" ".join(ptb_tokenize(r)) for r in refs] for i, refs in enumerate(REFERENCES)}
    for candidates in (CANDIDATES, [refs[0] for refs in REFERENCES], ["a", "dogs", "", "a cat on a couch"]):
        res = {i: [" ".join(ptb_tokenize(c))] for i, c in enumerate(candidates)}
        mean, per_image = cider.Cider().compute_score(gts, res)
        scorer = CiderD(REFERENCES)
        assert [scorer.score(c, r) for c, r in zip(candidates, REFERENCES)] == pytest.approx(list(per_image), rel=1e-12)


def test_cider_d_by_hand():
    # Corpus of N = 2 images; "a", "b" and "a b" occur in one image's references: idf = ln 2 - ln 1.
    scorer = CiderD([["a b"], ["c d"]])
    # Same two words: cosine 1 for unigrams and bigrams, no 3- or 4-grams: 10 * (1 + 1 + 0 + 0) / 4.
    assert scorer.score("a b", ["a b"]) == pytest.approx(5.0)
    # "a" alone: unigram cosine ln2^2 / (ln2 * ln2 * sqrt 2) = 1/sqrt 2, no bigram, and a length of
    # 0 bigrams against 1: penalty exp(-1 / (2 * 6^2)).
    assert scorer.score("a", ["a b"]) == pytest.approx(10 * (2**-0.5 * math.exp(-1 / 72)) / 4)
    # An n-gram in every image's references weighs ln 2 - ln 2 = 0: "a" alone then scores 0.
    assert CiderD([["a b"], ["a c"]]).score("a", ["a b"]) == 0.0


def test_cider_d_is_at_most_ten_and_answer_score_scales_it_to_one():
    scorer = CiderD([["a man rides a red bike"] * 3, ["two dogs"]])
    assert scorer.score("a man rides a red bike", ["a man rides a red bike"] * 3) == pytest.approx(CIDER_MAX)
    assert answer_score("A man rides a red bike.", ["a man rides a red bike"] * 3, "cider", cider=scorer) == (
        pytest.approx(1.0)
    )
    assert answer_score("two dogs", ["a man rides a red bike"], "cider", cider=scorer) == 0.0


def test_answer_score_uses_the_vqa_score_for_vqa_sets():
    answers = ["2"] * 4 + ["two"] * 3 + ["3", "2", "4"]
    assert answer_score("two", answers) == vqa_score("two", answers) == 1.0


def test_bad_input_says_what_to_pass():
    with pytest.raises(ValueError, match="cider=CiderD"):
        answer_score("a dog", ["a dog"], "cider")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        answer_score("a dog", ["a dog"], "bleu")
    with pytest.raises(ValueError, match="at least one reference"):
        CiderD([["a dog"], []])
    with pytest.raises(ValueError, match="non-empty list"):
        CiderD([["a dog"]]).score("a dog", "a dog")
