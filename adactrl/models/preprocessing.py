"""Molmo-style multi-crop preprocessing: a low-resolution global crop plus a grid of
overlapping high-resolution crops whose count is set by the vision tier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

ACCEPTED_MODES = ("RGB", "RGBA", "LA", "L", "1", "P", "CMYK")


@dataclass(frozen=True)
class CropConfig:
    """How an image becomes crops. Every crop is resized to `crop_size` pixels square."""

    image_size: int = 48
    """Images are resized to this square size first."""
    crop_size: int = 24
    """Pixel size of every crop fed to the vision tower."""
    global_size: int = 12
    """The global crop is the whole image shrunk to this size, then resized up to `crop_size`:
    a quarter of the image's resolution, as MolmoE's 336 px global crop is of a 1344 px image.
    Colours and big shapes survive it; small shapes and 1 px glyph strokes do not."""
    tier_grids: tuple[tuple[str, int], ...] = (("low", 0), ("medium", 2), ("high", 3))
    """Per tier, the side of the grid of high-resolution crops added to the global crop."""

    def __post_init__(self) -> None:
        if not 1 <= self.global_size <= self.crop_size:
            raise ValueError(f"global_size {self.global_size} must lie between 1 and crop_size {self.crop_size}")
        if self.crop_size > self.image_size:
            raise ValueError(f"crop_size {self.crop_size} must not exceed image_size {self.image_size}")
        for tier, grid in self.tier_grids:
            if grid < 0 or (grid > 0 and grid * self.crop_size < self.image_size):
                raise ValueError(
                    f"tier {tier!r}: a {grid}x{grid} grid of {self.crop_size}px crops cannot cover "
                    f"{self.image_size}px; use a larger grid or 0 for the global crop only"
                )

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.tier_grids)

    def grid(self, tier: str) -> int:
        for name, grid in self.tier_grids:
            if name == tier:
                return grid
        raise ValueError(f"unknown tier {tier!r}; choose one of {list(self.tiers)}")

    def max_crops(self, tier: str) -> int:
        """Crops at this tier, the global crop included (Molmo's `max_crops` plus one)."""
        return 1 + self.grid(tier) ** 2


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image. Grey, black-and-white, palette and CMYK images are converted; alpha
    is composited on white. Any other mode (16-bit, float) is refused rather than silently mis-scaled."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError("the image is empty (0 pixels wide or high)")
    if image.mode == "RGB":
        return image
    if image.mode not in ACCEPTED_MODES:
        raise ValueError(
            f"image mode {image.mode!r} is not supported; convert it to RGB (8 bits per channel) first"
        )
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


MAX_IMAGE_PIXELS = 8192 * 8192
"""The largest image `load_image` decodes (67 MP, 200 MB as RGB). Every tier resizes far below
this; a larger file is refused before it is decoded, not left to exhaust memory."""


def load_image(path: str) -> Image.Image:
    """Open an image file as RGB, with an error that names the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{image.width}x{image.height} pixels is above the limit of {MAX_IMAGE_PIXELS:,} "
                                 "(adactrl.models.preprocessing.MAX_IMAGE_PIXELS); downscale it first")  # fmt: skip
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # ValueError: a mode to_rgb refuses
        raise ValueError(f"cannot read image {path}: {err}") from err


def crop_boxes(config: CropConfig, tier: str) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (left, top, right, bottom) of the high-resolution crops, row-major.

    The grid's windows overlap evenly so that together they cover the whole image."""
    grid = config.grid(tier)
    if grid == 0:
        return []
    window = max(config.crop_size, -(-config.image_size // grid))
    if grid > 1:
        # Overlapping windows: widen them so neighbours share a margin, as Molmo's crops do.
        window = max(window, min(config.image_size, round(config.image_size * 1.25 / grid)))
    step = 0 if grid == 1 else (config.image_size - window) / (grid - 1)
    offsets = [round(i * step) for i in range(grid)]
    return [(x, y, x + window, y + window) for y in offsets for x in offsets]


def make_crops(image: Image.Image, tier: str, config: CropConfig) -> torch.Tensor:
    """An image -> [C, 3, crop, crop] floats in [-1, 1], the global crop first."""
    image = to_rgb(image)
    if image.size != (config.image_size, config.image_size):
        image = image.resize((config.image_size, config.image_size), Image.Resampling.BILINEAR)
    size = (config.crop_size, config.crop_size)
    shrunk = image.resize((config.global_size, config.global_size), Image.Resampling.BOX)
    crops = [shrunk.resize(size, Image.Resampling.BILINEAR)]
    for box in crop_boxes(config, tier):
        crop = image.crop(box)
        crops.append(crop if crop.size == size else crop.resize(size, Image.Resampling.BOX))
    pixels = np.stack([np.asarray(c, dtype=np.float32) for c in crops])  # [C, H, W, 3]
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # [C, 3, H, W]
    return tensor / 127.5 - 1.0
