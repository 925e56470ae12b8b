"""MolmoE's config parsing and Molmo preprocessing: crops per tier, token layout, patch masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adactrl.models.molmoe.config import load_config
from adactrl.models.molmoe.preprocessing import select_tiling
from adactrl.models.molmoe.random_checkpoint import MOLMOE_1B


def test_the_release_config_parses_to_molmoe_1b(tmp_path, molmoe_dir):
    (tmp_path / "config.json").write_text(json.dumps(MOLMOE_1B | {"embedding_size": 50304}))
    pre = json.loads((molmoe_dir / "preprocessor_config.json").read_text())
    pre |= {"base_image_input_size": [336, 336], "image_patch_size": 14, "image_token_length_h": 12, "image_token_length_w": 12}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    config = load_config(tmp_path)
    assert config.is_molmoe_1b
    # 64 experts of width 1024; 50304 LM-head rows + 128 extra embeddings; ViT read up to layer -2 of 23
    assert (config.expert_hidden, config.num_embeddings, config.embedding_size) == (1024, 50432, 50304)
    assert (config.deepest_vit_layer, config.vision_feature_dim, config.crops.margins) == (22, 2048, (4, 4))
    assert (config.rope_theta, config.crops.max_crops, config.head_dim) == (10000.0, 12, 128)


def test_a_variant_the_port_does_not_reproduce_is_refused(tmp_path, molmoe_dir):
    for name in ("preprocessor_config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((molmoe_dir / name).read_bytes())
    config = json.loads((molmoe_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"rope_impl": "cockatoo"}))
    with pytest.raises(ValueError, match=r"config.json: rope_impl = 'cockatoo' is not supported"):
        load_config(tmp_path)


def test_tiling_prefers_the_smallest_grid_that_needs_no_downscaling():
    # window 224, margins 112 px: 188x388 fits a 1x2 grid (448 px wide) without shrinking
    assert select_tiling(300 - 112, 500 - 112, 224, 12) == (1, 2)
    assert select_tiling(900 - 112, 420 - 112, 224, 12) == (4, 2)
    assert select_tiling(900 - 112, 420 - 112, 224, 3) == (3, 1)  # forced to downscale: least shrink
    assert select_tiling(70 - 112, 90 - 112, 224, 12) == (1, 1)  # smaller than the margins


@pytest.mark.parametrize("tier,tiling", [("low", (1, 2)), ("medium", (2, 3)), ("high", (3, 4))])
def test_each_tier_caps_the_crops_and_every_patch_token_gets_one_feature(molmoe, wide_image, tier, tiling):
    image = molmoe.preprocess(wide_image, tier)
    rows, cols = image.tiling
    assert image.tiling == tiling and rows * cols <= molmoe.tier_crops[tier]
    assert image.pixels.shape == (1 + rows * cols, 3, 48, 48)
    ids = molmoe.tokenizer.image_ids
    # global 6x6 grid, then (rows*4 + 8)/2 x (cols*4 + 8)/2 pooled tokens, one <im_col> per row
    height, width = (rows * 4 + 8) // 2, (cols * 4 + 8) // 2
    assert int((image.tokens == ids.patch).sum()) == 36 + height * width
    assert int((image.tokens == ids.col).sum()) == 6 + height
    assert len(image.tokens) == (2 + 6 * 7) + (2 + height * (width + 1))
    placed = image.feature_positions[image.feature_positions >= 0]
    assert len(placed) == len(set(placed.tolist()))
    assert torch.equal(placed.sort().values, (image.tokens == ids.patch).nonzero()[:, 0])


def test_crop_masks_are_paired_off_by_one_as_released(molmoe):
    """A letterboxed image: padding shows in the crops' masks, shifted one crop up the list."""
    strip = Image.fromarray(np.full((40, 160, 3), 200, dtype=np.uint8))
    image = molmoe.preprocess(strip, "high")
    masks = image.patch_masks  # [C, P]
    assert bool((masks[-1] == -1).all()), "the last crop carries -1: the partial-pad embedding everywhere"
    assert bool((masks[:-1] >= 0).all() and (masks[:-1] <= 1).all())
    assert float(masks[:-1].min()) == 0.0, "letterbox rows are all padding"


def test_image_tokens_grow_with_the_tier(molmoe, wide_image):
    counts = [len(molmoe.preprocess(wide_image, t).tokens) for t in ("low", "medium", "high")]
    assert counts == sorted(counts) and len(set(counts)) == 3
