import numpy as np
import pytest
import torch
from PIL import Image

from adactrl.data.synthetic import IMAGE_SIZE, SceneObject, SyntheticSample, generate_sample
from adactrl.models.dense import IGNORE, NO_DIGIT, PAIRS, DenseHeads, token_regions, token_targets
from adactrl.models.preprocessing import CropConfig

CROP = CropConfig()
SIDE = 3  # 24 px crops, 4 px patches, 2x2 groups


def _sample(objects=(), digit_box=None, digit=None) -> SyntheticSample:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (230, 230, 230))
    return SyntheticSample(image, "q", "a", ("a",) * 10, "digit", tuple(objects), digit_box, digit)


@pytest.mark.parametrize(("tier", "tokens"), [("low", 9), ("medium", 45), ("high", 90)])
def test_one_region_per_image_token_in_model_order(tier, tokens):
    regions = token_regions(CROP, tier, SIDE)
    assert len(regions) == tokens
    # The global crop's 3x3 tokens come first and tile the whole image row by row.
    assert [r for r, _ in regions[:3]] == [(0.0, 0.0, 16.0, 16.0), (16.0, 0.0, 32.0, 16.0), (32.0, 0.0, 48.0, 16.0)]
    assert all(c == (0.0, 0.0, 48.0, 48.0) for _, c in regions[:9])


def test_object_centres_and_colour_cover_land_on_the_right_tokens():
    small = SceneObject("circle", "red", (2, 2, 8, 8))  # centre (5, 5): global token 0
    big = SceneObject("square", "blue", (24, 24, 40, 40))  # centre (32, 32): global token 8
    targets = token_targets([_sample([small, big])], CROP, "low", SIDE)
    red_circle, blue_square = PAIRS.index(("red", "circle")), PAIRS.index(("blue", "square"))
    assert targets.pairs[0, :, red_circle].nonzero().flatten().tolist() == [0]
    assert targets.pairs[0, :, blue_square].nonzero().flatten().tolist() == [8]
    assert targets.pairs.sum() == 2 and targets.big[0].nonzero().flatten().tolist() == [8]
    # The big square covers a quarter of tokens 4, 5, 7 and 8: enough to count in each.
    assert targets.colors[0, :, 2].nonzero().flatten().tolist() == [4, 5, 7, 8]
    assert targets.colors[0, :, 0].nonzero().flatten().tolist() == [0]
    assert (targets.digit == NO_DIGIT).all()


def test_digit_target_only_where_the_crop_holds_the_whole_box():
    box = (13, 1, 20, 10)  # centre (16.5, 5.5)
    targets = token_targets([_sample(digit_box=box, digit="7")], CROP, "high", SIDE)
    regions = token_regions(CROP, "high", SIDE)
    labelled = {t: int(targets.digit[0, t]) for t in range(len(regions)) if targets.digit[0, t] != NO_DIGIT}
    for t, label in labelled.items():
        region, crop = regions[t]
        assert region[0] <= 16.5 < region[2] and region[1] <= 5.5 < region[3]
        whole = crop[0] <= box[0] and crop[1] <= box[1] and box[2] <= crop[2] and box[3] <= crop[3]
        assert label == (7 if whole else IGNORE)
    # The global crop and the top-left high crop (0..24) hold it whole; the top-middle (12..36) too.
    assert sorted(labelled.values()).count(7) == 3


def test_dense_loss_trains_a_head_and_reports_accuracies():
    torch.manual_seed(0)
    samples = [generate_sample(np.random.default_rng([1, i]), "digit") for i in range(4)]
    targets = token_targets(samples, CROP, "high", SIDE)
    tokens = torch.randn(4, 90, 16, requires_grad=True)
    heads = DenseHeads(16)
    optimizer = torch.optim.Adam([tokens, *heads.parameters()], lr=0.05)
    first, stats = heads.loss(tokens, targets)
    assert set(stats) == {"pairs_f1", "colors_f1", "digit_acc"}
    for _ in range(100):
        loss, stats = heads.loss(tokens, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first.item()
    assert stats["digit_acc"] == 1.0 and stats["pairs_f1"] > 0.9
