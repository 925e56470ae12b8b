"""A tiny random MolmoE checkpoint in the released layout, written once per test session."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adactrl.models.molmoe import MolmoEVLM
from adactrl.models.molmoe.random_checkpoint import write_random_checkpoint


@pytest.fixture(scope="session")
def molmoe_dir(tmp_path_factory):
    """config.json with the release's field names, two shards + index, BPE tokenizer with the
    image tokens, preprocessor_config.json: 4 LM blocks of 8 experts (top-4), 48 px crops."""
    return write_random_checkpoint(tmp_path_factory.mktemp("molmoe") / "ckpt")


@pytest.fixture(scope="session")
def molmoe(molmoe_dir) -> MolmoEVLM:
    return MolmoEVLM.load(molmoe_dir)


@pytest.fixture(scope="session")
def wide_image() -> Image.Image:
    """Big enough that every tier gets a different grid (low 1x2, medium 2x3, high 3x4)."""
    pixels = np.random.default_rng(0).integers(0, 256, (130, 170, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def image_file(tmp_path_factory, wide_image):
    path = tmp_path_factory.mktemp("images") / "wide.png"
    wide_image.save(path)
    return path
