from collections import Counter

import datasets
import numpy as np
import pytest

import adactrl.data as data
from adactrl.data import (
    FAMILIES,
    IMAGE_SIZE,
    NUM_ANSWERS,
    VOCABULARY,
    VQA_FEATURES,
    SyntheticVQAConfig,
    canonical_answer,
    generate_sample,
    load_vqa_dataset,
    make_synthetic_vqa,
)
from PIL import Image

from adactrl.data.synthetic import (
    COLORS,
    DIGIT_BOX_HEIGHT,
    DIGIT_BOX_WIDTH,
    DIGIT_GRID,
    DIGITS,
    PRICES,
    SHAPES,
    balancing_ink,
    digit_box_pattern,
)
from adactrl.models.preprocessing import CropConfig, crop_boxes


def _image_bytes(dataset: datasets.Dataset) -> list[bytes]:
    return [row["bytes"] for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def _samples(family: str, n: int) -> list:
    return [generate_sample(np.random.default_rng([5, i]), family) for i in range(n)]


def test_same_config_gives_identical_dataset():
    config = SyntheticVQAConfig(num_questions=12, seed=3)
    first, second = make_synthetic_vqa(config), make_synthetic_vqa(config)
    assert _image_bytes(first) == _image_bytes(second)
    for column in ("question", "answers", "question_id", "family", "answer"):
        assert first[column] == second[column]


def test_different_seeds_give_different_images():
    first = make_synthetic_vqa(SyntheticVQAConfig(num_questions=6, seed=0))
    second = make_synthetic_vqa(SyntheticVQAConfig(num_questions=6, seed=1))
    assert all(a != b for a, b in zip(_image_bytes(first), _image_bytes(second)))


def test_splits_have_disjoint_ids_and_images():
    sets = {s: make_synthetic_vqa(SyntheticVQAConfig(num_questions=6, split=s)) for s in data.SPLITS}
    ids = [set(d["question_id"]) for d in sets.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert _image_bytes(sets["train"])[0] != _image_bytes(sets["validation"])[0]


def test_columns_types_and_majority_answers():
    dataset = make_synthetic_vqa(SyntheticVQAConfig(num_questions=12))
    assert dataset.features == VQA_FEATURES
    assert dataset.column_names == ["image", "question", "answers", "question_id", "family", "answer"]
    for row in dataset:
        assert row["image"].mode == "RGB" and row["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
        assert len(row["answers"]) == NUM_ANSWERS
        assert row["answer"] == canonical_answer(row["answers"])
        assert row["answers"].count(row["answer"]) > NUM_ANSWERS // 2


def test_families_are_round_robin_and_tokens_in_vocabulary():
    dataset = make_synthetic_vqa(SyntheticVQAConfig(num_questions=len(FAMILIES) * 8, seed=1))
    assert dataset["family"] == list(FAMILIES) * 8
    vocabulary = set(VOCABULARY)
    for row in dataset:
        for text in (row["question"], *row["answers"]):
            assert set(text.split()) <= vocabulary, text


def test_digit_glyph_is_drawn_at_native_resolution():
    patterns = {d: digit_box_pattern(d) for d in DIGITS}
    assert len({p.tobytes() for p in patterns.values()}) == len(DIGITS)
    # Balancing ink may go on these paper pixels; every other pixel of the box is the pattern.
    room = np.any([balancing_ink("1", np.random.default_rng(i)) for i in range(200)], axis=0)
    fixed = ~room  # [h, w]
    high_crops = crop_boxes(CropConfig(image_size=IMAGE_SIZE), "high")
    for sample in _samples("digit", 20):
        pixels = np.asarray(sample.image, dtype=np.float32)  # [H, W, 3]
        # The ink is near black; the paper, the background and every object colour are lighter.
        dark = pixels.mean(axis=2) < 60  # [H, W]
        windows = np.lib.stride_tricks.sliding_window_view(dark, (DIGIT_BOX_HEIGHT, DIGIT_BOX_WIDTH))
        matches = {d: np.argwhere((windows == p)[..., fixed].all(axis=2)) for d, p in patterns.items()}  # [M, 2]
        assert {d: len(m) for d, m in matches.items() if len(m)} == {sample.answer: 1}
        top, left = matches[sample.answer][0]
        box = (left, top, left + DIGIT_BOX_WIDTH, top + DIGIT_BOX_HEIGHT)
        # Legible at the high tier only if one native-resolution crop holds the whole box.
        assert any(c[0] <= box[0] and c[1] <= box[1] and box[2] <= c[2] and box[3] <= c[3] for c in high_crops)
        # The sample reports where it drew the box; the glyph starts 1 px past a 4 px grid line.
        assert sample.digit_box == tuple(int(v) for v in box) and sample.digit == sample.answer
        assert (box[0] + 2) % DIGIT_GRID == 1 and (box[1] + 2) % DIGIT_GRID == 1


@pytest.mark.parametrize("digit", DIGITS)
def test_balancing_ink_fills_only_paper_and_evens_out_each_grid_cell(digit):
    pattern = digit_box_pattern(digit)
    paper = np.zeros_like(pattern)
    paper[1:-1, 1:-1] = ~pattern[1:-1, 1:-1]
    for seed in range(20):
        extra = balancing_ink(digit, np.random.default_rng(seed))
        assert not (extra & ~paper).any(), "balancing ink only goes on the box's paper"
        ink = pattern | extra
        # The glyph's two grid cells: box columns 1-4, box rows 1-4 and 5-8.
        assert (ink[1:5, 1:5].sum(), ink[5:9, 1:5].sum()) == (8, 9)


def test_digits_look_alike_in_the_global_view():
    """The low tier's 4x shrunk view shows every digit box the same way."""
    cells = {}
    for i in range(60):
        sample = generate_sample(np.random.default_rng([6, i]), "digit")
        shrunk = np.asarray(sample.image.resize((IMAGE_SIZE // 4,) * 2, Image.Resampling.BOX), dtype=np.float32)
        left, top = sample.digit_box[0] + 1, sample.digit_box[1] + 1  # the glyph's cells start here
        cells.setdefault(sample.digit, set()).add(shrunk[top // 4 : top // 4 + 2, left // 4].tobytes())
    assert len(cells) == len(DIGITS)
    assert len(set().union(*cells.values())) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_report_the_objects_they_drew(family):
    for sample in _samples(family, 10):
        pixels = np.asarray(sample.image, dtype=np.int32)  # [H, W, 3]
        assert sample.objects, "every scene draws at least one object"
        assert (sample.digit_box is not None) == (family in ("digit", "parity"))
        boxes = [o.box for o in sample.objects] + ([sample.digit_box] if sample.digit_box else [])
        for i, a in enumerate(boxes):
            assert 0 <= a[0] < a[2] <= IMAGE_SIZE and 0 <= a[1] < a[3] <= IMAGE_SIZE
            assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1] for b in boxes[i + 1 :])
        for obj in sample.objects:
            # The centre pixel of every shape wears the shape's colour (within the jitter).
            y, x = (obj.box[1] + obj.box[3]) // 2, (obj.box[0] + obj.box[2]) // 2
            assert np.abs(pixels[y, x] - np.array(COLORS[obj.color])).max() <= 12
            assert obj.big == (obj.box[2] - obj.box[0] >= 13)


def test_answer_distributions():
    counts = Counter(s.answer for s in _samples("count", 300))
    assert set(counts) == {"0", "1", "2", "3", "4", "5"}
    assert all(counts[str(n)] > 40 for n in range(5)) and counts["5"] < 40
    exists = Counter(s.answer for s in _samples("exists", 200))
    assert 80 < exists["yes"] < 120
    sides = Counter(s.answer for s in _samples("position", 100))
    assert set(sides) == {"left", "right"}
    parity = Counter(s.answer for s in _samples("parity", 200))
    assert set(parity) == {"odd", "even"} and 70 < parity["odd"] < 130


def test_same_color_compares_the_two_big_objects():
    answers = Counter()
    for sample in _samples("same_color", 100):
        big = [o for o in sample.objects if o.big]
        assert len(big) == 2, "exactly two big objects; the rest are small distractors"
        assert sample.answer == ("yes" if big[0].color == big[1].color else "no")
        answers[sample.answer] += 1
    assert 35 < answers["yes"] < 65


def test_parity_asks_about_the_digit_drawn():
    for sample in _samples("parity", 30):
        assert sample.question == "is the digit in the box odd or even ?"
        assert sample.digit is not None and sample.digit_box is not None
        assert sample.answer == ("odd" if int(sample.digit) % 2 else "even")


def test_price_reads_the_named_object_from_the_price_list():
    answers = Counter()
    for sample in _samples("price", 200):
        shape = sample.question.split()[4]
        assert sample.question == f"how much does the {shape} cost ?"
        named = [o for o in sample.objects if o.shape == shape]
        assert len(named) == 1, "the other objects are other shapes, so the question names one object"
        assert sample.answer == PRICES[(named[0].color, shape, named[0].big)]
        assert all((int(a) - int(sample.answer)) % 10 in (0, 1, 9) for a in sample.answers)  # off by one at most
        answers[sample.answer] += 1
    assert set(answers) == set(DIGITS)


def test_price_list_is_fixed_balanced_and_not_one_attribute():
    assert len(PRICES) == len(COLORS) * len(SHAPES) * 2
    assert sorted(Counter(PRICES.values()).values()) == [3] * 4 + [4] * 6
    # No colour, no shape and no size alone fixes the price: the answer is a stored conjunction.
    for attribute in range(3):
        groups: dict = {}
        for key, price in PRICES.items():
            groups.setdefault(key[attribute], set()).add(price)
        assert all(len(prices) >= 3 for prices in groups.values())


def test_canonical_answer_is_most_frequent_then_first():
    assert canonical_answer(["2", "two", "2", "3"]) == "2"
    assert canonical_answer(["no", "yes", "yes", "no"]) == "no"
    with pytest.raises(ValueError, match="at least one answer"):
        canonical_answer([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_questions": 0}, "num_questions must be between 1"),
        ({"num_questions": 5, "seed": -1}, "seed must be a non-negative"),
        ({"num_questions": 5, "split": "val"}, "use one of \\['train', 'validation', 'test'\\]"),
        ({"num_questions": 5, "families": ()}, "non-empty tuple"),
        ({"num_questions": 5, "families": "digit"}, "non-empty tuple"),
        ({"num_questions": 5, "families": ("digit", "ocr")}, "unknown families \\['ocr'\\]"),
        ({"num_questions": 5, "families": ("digit", "digit")}, "list each family once"),
    ],
)
def test_bad_config_raises_helpful_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticVQAConfig(**kwargs)


def test_unknown_family_and_dataset_name_raise():
    with pytest.raises(ValueError, match="choose from"):
        generate_sample(np.random.default_rng(0), "ocr")
    with pytest.raises(ValueError, match="'synthetic', 'text_vqa', 'coco_2014_vqa', 'okvqa', 'coco_caption', 'vqav2'"):
        load_vqa_dataset("coco", split="train", num_samples=4, seed=0)


def test_synthetic_through_registry():
    dataset = load_vqa_dataset("synthetic", split="test", num_samples=3, seed=2)
    assert dataset["question_id"] == [20_000_000, 20_000_001, 20_000_002]
