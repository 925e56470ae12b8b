"""CIDEr-D, the COCO caption metric, as the reference coco-caption code computes it
(pycocoevalcap's `Cider`, which is CIDEr-D), with its PTB tokenisation done in Python.

CIDEr-D of a candidate c against the m reference captions S of its image, over n-grams n = 1..4:

    CIDEr-D_n = 10/m * sum_j exp(-(l_c - l_j)^2 / (2 * 6^2)) * <min(g_c, g_j), g_j> / (|g_c| |g_j|)
    CIDEr-D   = mean over n of CIDEr-D_n

g is a vector of TF-IDF weights, tf * (log N - log max(1, df)), where df counts the images of the
reference corpus (N images) whose references hold the n-gram; so a score needs the corpus (the
evaluation split's references), not only the image's own. Each cosine term lies in [0, 1] (the
min() clipping keeps the dot product below |g_c| |g_j|), as does the Gaussian length penalty, so
CIDEr-D lies in [0, 10] by construction: divided by 10 it is a score in [0, 1] with no clipping.

Two details of the reference code are kept so that scores match it: the length l of a caption
is its number of bigrams (its words minus one), and n-grams outside the corpus count as df = 1.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

CIDER_MAX = 10.0
"""The largest CIDEr-D score: the 10 of the definition times cosines and a penalty of at most 1."""

# pycocoevalcap.tokenizer.ptbtokenizer drops these tokens after Stanford's PTBTokenizer has run
# with -lowerCase. Its brackets come out as "-lrb-" etc., which the upper-case list misses: kept.
_DROPPED = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                      "...", ";"})  # fmt: skip
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
_OPENING = "\"'`([{"
_CLOSING = "\"'`)]},;:!?."
# Words PTBTokenizer keeps with their period (a small list: the ones captions use).
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "ft.", "jr.", "sr.", "vs.", "etc.", "no.", "mt.",
                            "ave.", "inc.", "co.", "ltd.", "lb.", "lbs.", "oz.", "in."})  # fmt: skip
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"), "gotta": ("got", "ta")}
_SYMBOL = re.compile(r"^([$#])(?=\d)|(?<=\d)(%)$")


def ptb_tokenize(caption: str) -> list[str]:
    """The tokens pycocoevalcap's PTBTokenizer (Stanford PTBTokenizer -lowerCase, punctuation
    dropped) makes of `caption`, for caption-like text: words lower-cased, clitics split
    ("don't" -> "do n't", "cat's" -> "cat 's"), "$1,000" -> "$ 1,000", "50%" -> "50 %",
    brackets as "-lrb-", quotes and sentence punctuation dropped; "t-shirt", "3.5", "10:30",
    "a.m." and listed abbreviations ("st.") stay whole. Rarer constructions ("rock'n'roll")
    may split differently from the Java tokenizer."""
    tokens: list[str] = []
    for chunk in caption.lower().split():
        head: list[str] = []
        while chunk and chunk[0] in _OPENING:
            head.append(_BRACKETS.get(chunk[0], "'"))
            chunk = chunk[1:]
        tail: list[str] = []
        while chunk and chunk[-1] in _CLOSING and not _keeps_period(chunk):
            tail.insert(0, _BRACKETS.get(chunk[-1], "."))
            chunk = chunk[:-1]
        tokens += head + _split_word(chunk) + tail
    return [t for t in tokens if t and t not in _DROPPED]


def _keeps_period(chunk: str) -> bool:
    """A final period that PTBTokenizer leaves on its word: "a.m.", "u.s.", "st."."""
    return chunk.endswith(".") and ("." in chunk[:-1].strip(".") or chunk in _ABBREVIATIONS)


def _split_word(word: str) -> list[str]:
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    clitic = _CONTRACTION.match(word)
    if clitic:
        stem, suffix = clitic.groups()
        if suffix == "n't" and stem in ("ca", "wo", "sha"):  # can't -> ca n't, as PTB writes it
            return [stem, suffix]
        return _split_word(stem) + [suffix]
    symbol = _SYMBOL.search(word)
    if symbol and symbol.group(1):
        return [symbol.group(1), word[1:]]
    if symbol and symbol.group(2):
        return [word[:-1], "%"]
    return [word]


def _ngrams(tokens: Sequence[str], n: int = 4) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


class CiderD:
    """CIDEr-D against the document frequencies of a reference corpus: one list of reference
    captions per image, usually the evaluation split's. Captions are raw text; ptb_tokenize runs here."""

    def __init__(self, corpus: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> None:
        if not corpus or any(not refs for refs in corpus):
            raise ValueError("CIDEr-D needs a corpus of images, each with at least one reference caption")
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter[tuple[str, ...]] = Counter()
        for refs in corpus:
            self.document_frequency.update({g for ref in refs for g in _ngrams(ptb_tokenize(ref), n)})
        self.log_num_images = math.log(len(corpus))

    def score(self, candidate: str, references: Sequence[str]) -> float:
        """CIDEr-D of one candidate caption against its image's references, in [0, CIDER_MAX]."""
        if isinstance(references, str) or not references:
            raise ValueError("references must be a non-empty list of reference captions")
        hyp = self._vector(candidate)
        per_n = [0.0] * self.n
        for ref in references:
            for k, value in enumerate(self._similarity(hyp, self._vector(ref))):
                per_n[k] += value
        return CIDER_MAX * sum(per_n) / self.n / len(references)

    def corpus_score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """The mean CIDEr-D over images: pycocoevalcap's corpus score when this scorer's corpus is `references`."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        return sum(self.score(c, refs) for c, refs in zip(candidates, references)) / len(candidates)

    def _vector(self, caption: str) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        """TF-IDF weights by n-gram order, their norms, and the caption's length in bigrams."""
        counts = _ngrams(ptb_tokenize(caption), self.n)
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(self.n)]
        for gram, tf in counts.items():
            idf = self.log_num_images - math.log(max(1.0, self.document_frequency[gram]))
            vec[len(gram) - 1][gram] = tf * idf
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, bigrams

    def _similarity(self, hyp: tuple, ref: tuple) -> list[float]:
        (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
        penalty = math.exp(-((len_h - len_r) ** 2) / (2 * self.sigma**2))
        out = []
        for k in range(self.n):
            dot = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items())
            out.append(penalty * (dot / (norm_h[k] * norm_r[k]) if norm_h[k] and norm_r[k] else dot))
        return out
