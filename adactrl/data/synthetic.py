"""A procedurally generated VQA set on which the knobs trade accuracy for latency.

Eight question families, each testing a different ability:

- `color`, `shape`: about one big object, visible even in the quarter-resolution global view (easy).
- `count`, `exists`: composition over several objects (counting, colour-and-shape conjunction).
- `position`: whether one object lies in the left or the right third of the image.
- `same_color`: whether the two big objects share a colour. Attention can gather both colours in
  one read, but no linear function of that mixture tells "one colour twice" from "two colours
  once each": the answer needs computation after the read (an expert, or a further hop).
- `digit`: a 3x5-pixel glyph drawn at native scale with balancing ink beside it, so that every
  digit looks the same in the global view: legible only in the high-resolution crops.
- `parity`: whether that digit is odd or even: the same fine detail, then one step of reasoning
  about what was read.

Every question is drawn from its own generator, `numpy.random.default_rng([seed, split_index, i])`,
so a config always gives byte-identical images and any question can be rebuilt on its own.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 48
FAMILIES: tuple[str, ...] = (
    "color", "shape", "count", "exists", "position", "same_color", "digit", "parity", "price",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "validation", "test")
NUM_ANSWERS = 10
QUESTION_ID_STRIDE = 10_000_000
"""question_id = split_index * QUESTION_ID_STRIDE + i, so splits never share ids."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 85, 215),
    "yellow": (230, 200, 40), "purple": (135, 60, 175), "orange": (240, 135, 35),
}  # fmt: skip
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")

# A 3x5 bitmap font, digits 0-9 left to right ("#" = ink). One-pixel strokes average away in
# the global view's 4x downsampling: that is what makes the digit family need native resolution.
_FONT = """
### .#. ### ### #.# ### ### ### ### ###
#.# ##. ..# ..# #.# #.. #.. ..# #.# #.#
#.# .#. ### ### ### ### ### ..# ### ###
#.# .#. #.. ..# ..# ..# #.# ..# #.# ..#
### ### ### ### ..# ### ### ..# ### ###
"""
GLYPHS: dict[str, tuple[str, ...]] = {
    d: tuple(row.split()[i] for row in _FONT.strip().splitlines()) for i, d in enumerate(DIGITS)
}
"""Digit -> its 5 rows of 3 pixels."""
# The box is a 1 px ink border, 1 px of paper, then the glyph: 7 px wide, 9 px high. Anywhere in
# the image it lies wholly inside one 24 px crop of the 3x3 grid (offsets 0, 12, 24), never cut.
DIGIT_BOX_WIDTH, DIGIT_BOX_HEIGHT = 3 + 4, 5 + 4
_GLYPH_OFFSET = 2  # border + paper: the glyph starts 2 px inside its box
DIGIT_GRID, _GLYPH_PHASE = 4, 1
"""Glyphs start one pixel past a 4 px grid line, like text on the lines of a page. The
full-resolution crops start on that grid (offsets 0, 12, 24) and the vision patches are 4 px,
so there a glyph always sits inside one patch column, cut the same way. The global view's 4x
downsampling averages its three columns into one pixel and the medium crops' 0.8x resampling
blurs it; what survives is how much ink each averaged pixel holds, which still tells some digits
apart (a model trained without balancing ink read 0.67 of digits at the low tier), so every box
also gets `balancing_ink`."""
_BALANCE_ROOM: tuple[tuple[tuple[int, int], ...], ...] = (
    ((1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (1, 3), (1, 4)),  # the cell over glyph rows 0-2
    ((1, 5), (1, 6), (1, 7), (2, 7), (3, 7), (4, 7)),  # the cell over glyph rows 3-4
)
"""Paper pixels (x, y) of the box, in the two 4x4 grid cells that hold the glyph, where
balancing ink may go: the paper column left of the glyph and the paper rows above and below it."""
_GLYPH_ROWS_PER_CELL = ((0, 3), (3, 5))
"""Glyph rows (start, end) that fall in each of those two cells."""
_BALANCED_INK = (8, 5)
"""Glyph pixels per cell once balanced: the most any digit puts there (8 in the upper cell, for
8 and 9; 5 in the lower, for 0, 6 and 8). The lower cell also holds 4 px of the box border."""

_QUESTIONS: dict[str, str] = {
    "color": "what color is the big {shape} ?",
    "shape": "what shape is the big object ?",
    "count": "how many {color} objects are there ?",
    "exists": "is there {article} {color} {shape} ?",
    "position": "is the {color} {shape} on the left or the right ?",
    "same_color": "are the two big objects the same color ?",
    "digit": "what digit is in the box ?",
    "parity": "is the digit in the box odd or even ?",
    "price": "how much does the {shape} cost ?",
}
_FILLED_WORDS = (*COLOR_NAMES, *SHAPES, *DIGITS, *NUMBER_WORDS, "a", "an", "yes", "no", "left", "right", "odd", "even")
VOCABULARY: tuple[str, ...] = tuple(
    sorted({w for q in _QUESTIONS.values() for w in q.split() if "{" not in w} | set(_FILLED_WORDS))
)
"""Every token of every question and every annotator answer, sorted."""

VQA_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "question_id": datasets.Value("int64"),
        "family": datasets.Value("string"),
        "answer": datasets.Value("string"),
    }
)
"""The columns every VQA dataset of this project has; `answer` is the majority answer."""

_BIG, _SMALL = (13, 16), (6, 8)  # inclusive ranges of object sizes in pixels
_MAX_BIG = 2  # big objects per mixed scene, so that up to 7 objects still fit in 48 px
_MARGIN, _GAP = 1, 2  # px from the image edge; px between objects, so neighbours stay separable
_BOX_TRIES, _LAYOUT_TRIES = 200, 50
_NOISE = 6  # per-pixel background noise amplitude
_JITTER = 12  # per-object colour jitter amplitude
_INK, _PAPER = (25, 25, 25), (250, 250, 250)
_ANNOTATOR_AGREEMENT = 0.9
_COUNT_PROBS = (0.19, 0.19, 0.19, 0.19, 0.19, 0.05)  # target count 0..4 about uniform, 5 rarely
_HARD_NEGATIVE_RATE = 0.75  # "no" answers to `exists` with the colour and the shape both shown
_NEIGHBOUR_COLORS = {
    "red": ("orange", "purple"), "orange": ("red", "yellow"), "yellow": ("orange", "green"),
    "green": ("yellow", "blue"), "blue": ("green", "purple"), "purple": ("blue", "red"),
}  # fmt: skip
_PRICE_SEED = 2026
_PRICED = [(c, s, big) for c in COLOR_NAMES for s in SHAPES for big in (False, True)]
PRICES: dict[tuple[str, str, bool], str] = dict(
    zip(_PRICED, (str(p) for p in np.random.default_rng(_PRICE_SEED).permutation(np.arange(len(_PRICED)) % 10)))
)
"""The synthetic world's price list: (colour, shape, big) -> a price 0-9, every price 3-4 times,
drawn once (seed _PRICE_SEED) so that no colour, shape or size alone predicts it. The `price`
family asks it, like a VQA question that needs outside knowledge: the image says which object,
only memorised facts say what it costs."""
_CONFUSABLE_DIGITS = {
    "0": ("8",), "1": ("7",), "2": ("3", "7"), "3": ("8",), "4": ("9",),
    "5": ("6",), "6": ("5", "8"), "7": ("1",), "8": ("0", "3"), "9": ("4",),
}  # fmt: skip

Box = tuple[int, int, int, int]
"""Pixel box (left, top, right, bottom), right and bottom exclusive."""
_BoxRequest = tuple[int, int, tuple[int, int], int]
"""(width, height, allowed left edges, grid): the box's inside starts on multiples of grid."""


@dataclass(frozen=True)
class SyntheticVQAConfig:
    """Which synthetic questions to generate; the same config always gives the same dataset."""

    num_questions: int
    """Number of questions, one image each."""
    seed: int = 0
    """Base seed; question i is drawn from `default_rng([seed, split_index, i])`."""
    split: str = "train"
    """One of SPLITS; splits draw from disjoint random streams and have disjoint question ids."""
    families: tuple[str, ...] = FAMILIES
    """Families, assigned round-robin: question i asks `families[i % len(families)]`."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_questions <= QUESTION_ID_STRIDE:
            raise ValueError(
                f"num_questions must be between 1 and {QUESTION_ID_STRIDE} so that the question ids "
                f"of different splits never overlap, got {self.num_questions}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; use one of {list(SPLITS)}")
        if isinstance(self.families, str) or not self.families:
            raise ValueError(
                f"families must be a non-empty tuple of family names such as ('digit',), got "
                f"{self.families!r}; choose from {list(FAMILIES)}"
            )
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown families {unknown}; choose from {list(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families {self.families} repeats a family; list each family once")


@dataclass(frozen=True)
class SyntheticSample:
    """One generated question: an RGB image of IMAGE_SIZE pixels and its annotations."""

    image: Image.Image
    question: str
    answer: str
    """The canonical answer, always the strict majority of `answers`."""
    answers: tuple[str, ...]
    """NUM_ANSWERS simulated annotator answers, VQA style."""
    family: str
    objects: tuple[SceneObject, ...] = ()
    """Where every drawn shape lies, for dense auxiliary supervision (not a dataset column)."""
    digit_box: Box | None = None
    """The digit box with its border, when the image has one."""
    digit: str | None = None
    """The digit drawn in `digit_box`."""


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: what it is and the pixel box it was drawn in."""

    shape: str
    color: str
    box: Box

    @property
    def big(self) -> bool:
        return self.box[2] - self.box[0] >= _BIG[0]


@dataclass(frozen=True)
class _Thing:
    shape: str
    color: str
    size: int
    side: str | None = None
    """Either "left" or "right" to keep the object's centre strictly inside that third, or None."""


@dataclass(frozen=True)
class _Scene:
    question: str
    answer: str
    things: tuple[_Thing, ...]
    digit: str | None = None


def canonical_answer(answers: Sequence[str]) -> str:
    """The most frequent answer; a tie goes to the answer given first."""
    if not answers:
        raise ValueError("no answers to choose from; a VQA question needs at least one answer")
    return Counter(answers).most_common(1)[0][0]


def digit_box_pattern(digit: str) -> np.ndarray:
    """Where the digit box is inked: bool [DIGIT_BOX_HEIGHT, DIGIT_BOX_WIDTH], border included."""
    glyph = np.array([[c == "#" for c in row] for row in GLYPHS[digit]])  # [5, 3]
    box = np.ones((DIGIT_BOX_HEIGHT, DIGIT_BOX_WIDTH), dtype=bool)
    box[1:-1, 1:-1] = False
    box[2:-2, 2:-2] = glyph
    return box


def balancing_ink(digit: str, rng: np.random.Generator) -> np.ndarray:
    """Extra ink for the digit box: bool [DIGIT_BOX_HEIGHT, DIGIT_BOX_WIDTH].

    Random paper pixels beside the glyph, in each of the two 4x4 grid cells that hold it, bring
    that cell's inked pixels to the same count for every digit. The global view averages each
    such cell into one pixel, so at the low tier all ten digits look alike; the glyph's own
    pixels are untouched and read as before in the native-resolution crops."""
    glyph = np.array([[c == "#" for c in row] for row in GLYPHS[digit]])  # [5, 3]
    extra = np.zeros((DIGIT_BOX_HEIGHT, DIGIT_BOX_WIDTH), dtype=bool)
    for room, (start, end), total in zip(_BALANCE_ROOM, _GLYPH_ROWS_PER_CELL, _BALANCED_INK):
        chosen = rng.choice(len(room), size=total - int(glyph[start:end].sum()), replace=False)
        for i in chosen:
            x, y = room[int(i)]
            extra[y, x] = True
    return extra


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _size(rng: np.random.Generator, size_range: tuple[int, int]) -> int:
    return int(rng.integers(size_range[0], size_range[1] + 1))


def _mixed_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Mostly small objects with at most _MAX_BIG big ones."""
    num_big = min(_MAX_BIG, int(rng.binomial(n, 0.3)))
    big = set(rng.choice(n, size=num_big, replace=False).tolist())
    return [_size(rng, _BIG if i in big else _SMALL) for i in range(n)]


def _random_pairs(
    rng: np.random.Generator, n: int, exclude: tuple[str, str] | None = None
) -> list[tuple[str, str]]:
    """n random (colour, shape) pairs, none of them equal to `exclude`."""
    pairs = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) != exclude]
    return [pairs[i] for i in rng.integers(len(pairs), size=n)]


def _things(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> tuple[_Thing, ...]:
    """One object per (colour, shape) pair, with mixed sizes."""
    sizes = _mixed_sizes(rng, len(pairs))
    return tuple(_Thing(shape, color, size) for (color, shape), size in zip(pairs, sizes))


def _big_among_small(rng: np.random.Generator) -> tuple[_Thing, ...]:
    """One big object first, then 1-3 small distractors in other colours."""
    target = _Thing(_pick(rng, SHAPES), _pick(rng, COLOR_NAMES), _size(rng, _BIG))
    others = [c for c in COLOR_NAMES if c != target.color]
    num_distractors = int(rng.integers(1, 4))
    distractors = [
        _Thing(_pick(rng, SHAPES), _pick(rng, others), _size(rng, _SMALL)) for _ in range(num_distractors)
    ]
    return (target, *distractors)


def _color_scene(rng: np.random.Generator) -> _Scene:
    things = _big_among_small(rng)
    return _Scene(_QUESTIONS["color"].format(shape=things[0].shape), things[0].color, things)


def _shape_scene(rng: np.random.Generator) -> _Scene:
    things = _big_among_small(rng)
    return _Scene(_QUESTIONS["shape"], things[0].shape, things)


def _count_scene(rng: np.random.Generator) -> _Scene:
    target = int(rng.choice(len(_COUNT_PROBS), p=_COUNT_PROBS))
    total = int(rng.integers(max(3, target), 8))
    color = _pick(rng, COLOR_NAMES)
    others = [c for c in COLOR_NAMES if c != color]
    colors = [color] * target + [_pick(rng, others) for _ in range(total - target)]
    things = _things(rng, [(c, _pick(rng, SHAPES)) for c in colors])
    return _Scene(_QUESTIONS["count"].format(color=color), str(target), things)


def _exists_scene(rng: np.random.Generator) -> _Scene:
    color, shape = _pick(rng, COLOR_NAMES), _pick(rng, SHAPES)
    total = int(rng.integers(2, 6))
    present = rng.random() < 0.5
    if present:
        required = [(color, shape)]
    elif rng.random() < _HARD_NEGATIVE_RATE:
        # The colour and the shape are both shown, on different objects: only the conjunction
        # tells this "no" apart from a "yes".
        required = [
            (color, _pick(rng, [s for s in SHAPES if s != shape])),
            (_pick(rng, [c for c in COLOR_NAMES if c != color]), shape),
        ]
    else:
        required = []
    pairs = required + _random_pairs(rng, total - len(required), exclude=(color, shape))
    article = "an" if color[0] in "aeiou" else "a"
    question = _QUESTIONS["exists"].format(article=article, color=color, shape=shape)
    return _Scene(question, "yes" if present else "no", _things(rng, pairs))


def _position_scene(rng: np.random.Generator) -> _Scene:
    color, shape = _pick(rng, COLOR_NAMES), _pick(rng, SHAPES)
    side = _pick(rng, ("left", "right"))
    target = _Thing(shape, color, _size(rng, _BIG if rng.random() < 0.5 else _SMALL), side)
    # Excluding the target's pair keeps "the {color} {shape}" unambiguous.
    others = _things(rng, _random_pairs(rng, int(rng.integers(1, 4)), exclude=(color, shape)))
    question = _QUESTIONS["position"].format(color=color, shape=shape)
    return _Scene(question, side, (target, *others))


def _same_color_scene(rng: np.random.Generator) -> _Scene:
    first = _pick(rng, COLOR_NAMES)
    same = rng.random() < 0.5
    second = first if same else _pick(rng, [c for c in COLOR_NAMES if c != first])
    big = [_Thing(_pick(rng, SHAPES), c, _size(rng, _BIG)) for c in (first, second)]
    # Small distractors of any colour: counting the colours in the image does not answer it.
    num_small = int(rng.integers(0, 3))
    small = [_Thing(_pick(rng, SHAPES), _pick(rng, COLOR_NAMES), _size(rng, _SMALL)) for _ in range(num_small)]
    return _Scene(_QUESTIONS["same_color"], "yes" if same else "no", (*big, *small))


def _digit_scene(rng: np.random.Generator) -> _Scene:
    digit = _pick(rng, DIGITS)
    things = _things(rng, _random_pairs(rng, int(rng.integers(1, 4))))
    return _Scene(_QUESTIONS["digit"], digit, things, digit)


def _parity_scene(rng: np.random.Generator) -> _Scene:
    scene = _digit_scene(rng)
    return _Scene(_QUESTIONS["parity"], "odd" if int(scene.answer) % 2 else "even", scene.things, scene.digit)


def _price_scene(rng: np.random.Generator) -> _Scene:
    shape, color, big = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES), bool(rng.random() < 0.5)
    target = _Thing(shape, color, _size(rng, _BIG if big else _SMALL))
    # Distractors never share the target's shape, so "the {shape}" names one object.
    others = [s for s in SHAPES if s != shape]
    pairs = [(_pick(rng, COLOR_NAMES), _pick(rng, others)) for _ in range(int(rng.integers(1, 4)))]
    return _Scene(_QUESTIONS["price"].format(shape=shape), PRICES[(color, shape, big)], (target, *_things(rng, pairs)))


_SCENES: dict[str, Callable[[np.random.Generator], _Scene]] = {
    "color": _color_scene, "shape": _shape_scene, "count": _count_scene,
    "exists": _exists_scene, "position": _position_scene, "same_color": _same_color_scene,
    "digit": _digit_scene, "parity": _parity_scene, "price": _price_scene,
}  # fmt: skip


def _x_range(width: int, side: str | None) -> tuple[int, int]:
    """Allowed left edges (inclusive) for a box of this width, optionally confined to a third."""
    low, high = _MARGIN, IMAGE_SIZE - _MARGIN - width
    third = IMAGE_SIZE / 3
    if side == "left":  # centre x + width / 2 < third
        high = min(high, math.ceil(third - width / 2) - 1)
    elif side == "right":  # centre x + width / 2 > 2 * third
        low = max(low, math.floor(2 * third - width / 2) + 1)
    return low, high


def _too_close(a: Box, b: Box) -> bool:
    return a[0] < b[2] + _GAP and b[0] < a[2] + _GAP and a[1] < b[3] + _GAP and b[1] < a[3] + _GAP


def _free_box(
    rng: np.random.Generator, request: _BoxRequest, taken: Sequence[Box]
) -> Box | None:
    """A random box clear of every taken box, or None when _BOX_TRIES positions all collide."""
    width, height, x_range, grid = request
    xs = np.arange(x_range[0], x_range[1] + 1)
    ys = np.arange(_MARGIN, IMAGE_SIZE - _MARGIN - height + 1)
    if grid > 1:  # the glyph starts _GLYPH_PHASE px past a grid line
        xs, ys = xs[(xs + _GLYPH_OFFSET) % grid == _GLYPH_PHASE], ys[(ys + _GLYPH_OFFSET) % grid == _GLYPH_PHASE]
    for _ in range(_BOX_TRIES):
        x, y = int(xs[rng.integers(len(xs))]), int(ys[rng.integers(len(ys))])
        box = (x, y, x + width, y + height)
        if not any(_too_close(box, other) for other in taken):
            return box
    return None


def _place_boxes(rng: np.random.Generator, requests: Sequence[_BoxRequest]) -> list[Box]:
    """Non-overlapping boxes, one per (width, height, x_range, grid) request, in request order.

    Rejection sampling: when a box finds no room, the whole layout starts again."""
    for _ in range(_LAYOUT_TRIES):
        boxes: list[Box] = []
        for request in requests:
            box = _free_box(rng, request, boxes)
            if box is None:
                break
            boxes.append(box)
        else:
            return boxes
    raise RuntimeError(
        f"could not place {len(requests)} non-overlapping objects in {IMAGE_SIZE} px after "
        f"{_LAYOUT_TRIES} layouts; use fewer or smaller objects"
    )


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: tuple[int, int, int]) -> None:
    # PIL's shape coordinates are inclusive, our boxes' right and bottom are not.
    left, top, right, bottom = box[0], box[1], box[2] - 1, box[3] - 1
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)


def _render(
    rng: np.random.Generator, scene: _Scene
) -> tuple[Image.Image, tuple[SceneObject, ...], Box | None]:
    # Side-constrained and big objects first: they are the hardest to fit.
    things = sorted(scene.things, key=lambda t: (t.side is None, -t.size))
    requests = [(t.size, t.size, _x_range(t.size, t.side), 1) for t in things]
    if scene.digit is not None:
        requests.insert(0, (DIGIT_BOX_WIDTH, DIGIT_BOX_HEIGHT, _x_range(DIGIT_BOX_WIDTH, None), DIGIT_GRID))
    boxes = _place_boxes(rng, requests)

    tint = rng.integers(210, 246, size=3)  # a light background with a mild random tint
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(tint + noise, 0, 255).astype(np.uint8)  # [H, W, 3]
    digit_box = None
    if scene.digit is not None:
        digit_box = boxes.pop(0)
        left, top, right, bottom = digit_box
        ink = (digit_box_pattern(scene.digit) | balancing_ink(scene.digit, rng))[..., None]  # [h, w, 1]
        pixels[top:bottom, left:right] = np.where(ink, _INK, _PAPER)

    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for thing, box in zip(things, boxes):
        jitter = rng.integers(-_JITTER, _JITTER + 1, size=3)
        r, g, b = np.clip(np.array(COLORS[thing.color]) + jitter, 0, 255).tolist()
        _draw_shape(draw, thing.shape, box, (r, g, b))
    objects = tuple(SceneObject(t.shape, t.color, box) for t, box in zip(things, boxes))
    return image, objects, digit_box


def _alternatives(family: str, answer: str) -> tuple[str, ...]:
    """The plausible wrong answers an annotator of this family gives."""
    match family:
        case "color":
            return _NEIGHBOUR_COLORS[answer]
        case "shape":
            return tuple(s for s in SHAPES if s != answer)
        case "count":
            n = int(answer)
            return (*(str(m) for m in (n - 1, n + 1) if m >= 0), NUMBER_WORDS[n])
        case "exists" | "same_color":
            return ("no",) if answer == "yes" else ("yes",)
        case "position":
            return ("right",) if answer == "left" else ("left",)
        case "parity":
            return ("even",) if answer == "odd" else ("odd",)
        case "price":  # a price misremembered by one
            return (str((int(answer) + 9) % 10), str((int(answer) + 1) % 10))
        case _:  # digit
            return _CONFUSABLE_DIGITS[answer]


def _annotate(rng: np.random.Generator, answer: str, alternatives: Sequence[str]) -> tuple[str, ...]:
    answers = [
        answer if rng.random() < _ANNOTATOR_AGREEMENT else _pick(rng, alternatives)
        for _ in range(NUM_ANSWERS)
    ]
    # Rare unlucky draws lose the strict majority; restore it so `answer` is the canonical one.
    missing = NUM_ANSWERS // 2 + 1 - answers.count(answer)
    for i in [i for i, a in enumerate(answers) if a != answer][: max(0, missing)]:
        answers[i] = answer
    return tuple(answers)


def generate_sample(rng: np.random.Generator, family: str) -> SyntheticSample:
    """One question of `family`, drawn entirely from `rng`."""
    if family not in _SCENES:
        raise ValueError(f"unknown family {family!r}; choose from {list(FAMILIES)}")
    scene = _SCENES[family](rng)
    image, objects, digit_box = _render(rng, scene)
    answers = _annotate(rng, scene.answer, _alternatives(family, scene.answer))
    return SyntheticSample(image, scene.question, scene.answer, answers, family, objects, digit_box, scene.digit)


def _png(image: Image.Image) -> dict[str, bytes | None]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def make_synthetic_vqa(config: SyntheticVQAConfig) -> datasets.Dataset:
    """The synthetic set with VQA_FEATURES columns; families are assigned round-robin."""
    split_index = SPLITS.index(config.split)
    rows: dict[str, list] = {name: [] for name in VQA_FEATURES}
    for i in range(config.num_questions):
        family = config.families[i % len(config.families)]
        sample = generate_sample(np.random.default_rng([config.seed, split_index, i]), family)
        # Encoding here, not in `datasets`, keeps memory at a few KB per question.
        rows["image"].append(_png(sample.image))
        rows["question"].append(sample.question)
        rows["answers"].append(list(sample.answers))
        rows["question_id"].append(split_index * QUESTION_ID_STRIDE + i)
        rows["family"].append(family)
        rows["answer"].append(sample.answer)
    return datasets.Dataset.from_dict(rows, features=VQA_FEATURES)
