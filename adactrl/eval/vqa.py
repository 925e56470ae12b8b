"""The standard VQA accuracy with the answer normalisation of the official VQA evaluation.

Normalisation, in the official order:
1. punctuation: the characters in ``_PUNCTUATION`` are deleted when the answer has one of them
   next to a space, or has a comma between digits ("1,000" -> "1000"); otherwise each is replaced
   by a space ("t-shirt" -> "t shirt"). Apostrophes and colons are kept ("don't", "10:30").
2. periods are deleted unless they sit between two digits ("3.5" stays, "yes." -> "yes").
3. lower-case, split on whitespace, number words "none".."ten" -> "0".."10", articles
   (a, an, the) dropped, contractions written without their apostrophe restored ("dont" -> "don't").

Two deliberate differences from the official script, both so that equal answers compare equal:
the contraction table is lower-case (the official "Im" -> "I'm" never fires after lower-casing),
and a period is kept only between digits (the official pattern's lookbehind is mistyped, so it
keeps ".5" too). Ground-truth answers are always normalised like the prediction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_COMMA_IN_NUMBER = re.compile(r"\d,\d")
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}


def _contractions() -> dict[str, str]:
    """Apostrophe-less spellings -> the contraction; double contractions in every spelling."""
    table = {
        "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
        "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
        "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hes": "he's",
        "howd": "how'd", "howll": "how'll", "hows": "how's", "im": "i'm", "ive": "i've",
        "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's", "maam": "ma'am",
        "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
        "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
        "shant": "shan't", "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
        "somebodyd": "somebody'd", "somebodyll": "somebody'll", "somebodys": "somebody's",
        "someoned": "someone'd", "someonell": "someone'll", "someones": "someone's",
        "somethingd": "something'd", "somethingll": "something'll", "thats": "that's",
        "thered": "there'd", "therere": "there're", "theres": "there's", "theyd": "they'd",
        "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
        "wasnt": "wasn't", "weve": "we've", "werent": "weren't", "whatll": "what'll",
        "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
        "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
        "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
        "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
        "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
        "youre": "you're", "youve": "you've",
    }
    # Double contractions: "couldnt've", "couldn'tve" and "couldntve" all mean "couldn't've".
    for first, second in (("couldn't", "ve"), ("hadn't", "ve"), ("he'd", "ve"), ("i'd", "ve"),
                          ("it'd", "ve"), ("mightn't", "ve"), ("shouldn't", "ve"),
                          ("she'd", "ve"), ("somebody'd", "ve"), ("someone'd", "ve"),
                          ("something'd", "ve"), ("there'd", "ve"), ("they'd", "ve"),
                          ("we'd", "ve"), ("who'd", "ve"), ("wouldn't", "ve"), ("you'd", "ve"),
                          ("y'all", "ll"), ("y'all'd", "ve")):
        bare = first.replace("'", "")
        for spelling in (f"{bare}'{second}", f"{first}{second}", f"{bare}{second}"):
            table.setdefault(spelling, f"{first}'{second}")
    return table


_CONTRACTIONS = _contractions()


def _strip_punctuation(text: str) -> str:
    delete_all = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # The decision looks at the original text, as the official script does.
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _NON_DECIMAL_PERIOD.sub("", out)


def normalize_answer(text: str) -> str:
    """An answer in the canonical form the VQA score compares: see the module docstring."""
    words = []
    for word in _strip_punctuation(text).lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the two answers are equal after normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of one prediction against the annotators' answers, in [0, 1].

    For each answer left out in turn, the prediction scores min(1, matches among the others / 3);
    the score is the average over the leave-one-out subsets. With 10 answers this is the official
    metric (2 matches -> 0.6, 3 -> 0.9, 4 or more -> 1.0). With fewer answers the bar is lowered
    to min(3, len(answers) - 1) matches so a unanimous match still scores 1.0; a single answer has
    no leave-one-out subset and scores by exact match.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of answer strings, not one string")
    if len(answers) == 0:
        raise ValueError("answers is empty: pass at least one annotator answer")
    pred = normalize_answer(prediction)
    truths = [normalize_answer(a) for a in answers]
    if len(truths) == 1:
        return float(pred == truths[0])
    needed = min(3, len(truths) - 1)
    hits = sum(t == pred for t in truths)
    # Leaving out a matching answer removes one match from the subset; any other leaves all.
    per_subset = [min(1.0, (hits - (t == pred)) / needed) for t in truths]
    return sum(per_subset) / len(per_subset)
