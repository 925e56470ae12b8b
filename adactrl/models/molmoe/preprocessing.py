"""Molmo's image preprocessing: a global crop plus overlapping high-resolution crops.

The image is resized (aspect kept, zero padded) onto a grid of `rows x cols` crops chosen for
its shape under `max_crops`. Neighbouring crops overlap; `margins` patches at every inner crop
edge are dropped after pooling, so the pooled tokens of all crops tile the image exactly once.
The image becomes the token segment

    <im_start> (<im_patch> x 12, <im_col>) x 12 <im_end>      global crop, 12x12 pooled tokens
    <im_start> (<im_patch> x W, <im_col>) x H <im_end>        the crops' tokens, raster order

and every pooled feature is added onto the embedding of its `<im_patch>` position.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adactrl.models.molmoe.config import CropGeometry, MolmoEConfig

IMAGE_TOKENS = ("<im_start>", "<im_end>", "<im_patch>", "<im_col>")


@dataclass(frozen=True)
class ImageTokenIds:
    start: int
    end: int
    patch: int
    col: int


@dataclass(frozen=True)
class MolmoImage:
    """One preprocessed image: crops for the ViT and where their pooled features go."""

    pixels: torch.Tensor
    """[C, 3, S, S] normalised crops, the global crop first."""
    patch_masks: torch.Tensor
    """[C, P] share of real (unpadded) pixels in each ViT patch, paired with the crops the way the
    released preprocessing pairs them: crop c carries the mask of high-resolution crop c (so the
    global crop carries the first crop's mask) and the last crop carries -1 everywhere."""
    tokens: torch.Tensor
    """[N] ids of the image's token segment."""
    feature_positions: torch.Tensor
    """[C, Q] index into `tokens` of each crop's pooled feature; -1 where a feature is dropped."""
    tiling: tuple[int, int]
    """High-resolution crops as (rows, cols)."""

    def to(self, device: torch.device | str) -> MolmoImage:
        return replace(self, pixels=self.pixels.to(device), patch_masks=self.patch_masks.to(device))

    @property
    def num_crops(self) -> int:
        return int(self.pixels.shape[0])


def select_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """The (rows, cols) grid with at most `max_crops` crops that needs the least upscaling to hold
    a `height x width` image (or, when every grid must shrink it, the least downscaling).
    Ties go to fewer crops, then fewer rows. Arithmetic in float32, as the released code does it."""
    grids = sorted(
        ((r, c) for r in range(1, max_crops + 1) for c in range(1, max_crops + 1) if r * c <= max_crops),
        key=lambda g: (g[0] * g[1], g[0]),
    )
    sizes = np.array(grids, dtype=np.float32) * np.float32(window)  # [G, 2]
    with np.errstate(divide="ignore"):
        scale = (sizes / np.array([height, width], dtype=np.float32)).min(axis=1)  # [G]
    if np.all(scale < 1):
        return grids[int(np.argmax(scale))]
    return grids[int(np.argmin(np.where(scale < 1.0, np.float32(1e10), scale)))]


def resize_and_pad(
    image: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, h, w] floats in [0, 1] -> normalised [3, H, W] with the image centred and zero padded
    (zero before normalisation), and the [H, W] mask of real pixels."""
    height, width = image.shape[1:]
    scale = min(np.float32(size[0]) / np.float32(height), np.float32(size[1]) / np.float32(width))
    new_h, new_w = int(np.float32(height) * scale), int(np.float32(width) * scale)
    resized = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    resized = resized[0].clamp(0.0, 1.0)
    top, left = (size[0] - new_h) // 2, (size[1] - new_w) // 2
    padding = (left, size[1] - new_w - left, top, size[0] - new_h - top)
    mask = F.pad(torch.ones(new_h, new_w), padding)
    padded = F.pad(resized, padding)
    return (padded - mean[:, None, None]) / std[:, None, None], mask


def load_image(path: str | Path) -> Image.Image:
    """Open an image file, with an error that names the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image {path} ({err}); pass a PNG, JPEG or other file PIL can read") from err


def to_pixels(image: Image.Image) -> torch.Tensor:
    """PIL image -> [3, h, w] floats in [0, 1]. Alpha is dropped, as the released processor does."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def preprocess(image: Image.Image, config: MolmoEConfig, ids: ImageTokenIds, max_crops: int) -> MolmoImage:
    """An image -> crops, patch masks and its token segment with `max_crops` crops at most."""
    if max_crops < 1:
        raise ValueError(f"max_crops must be at least 1, got {max_crops}")
    geometry, vision = config.crops, config.vision
    patch, side = vision.patch_size, vision.crop_size
    margin_left, margin_right = geometry.margins
    window_patches = vision.patches_per_side - margin_left - margin_right
    window = window_patches * patch
    margin_pixels = (margin_left + margin_right) * patch
    mean, std = torch.tensor(geometry.image_mean), torch.tensor(geometry.image_std)

    pixels = to_pixels(image)
    rows, cols = select_tiling(pixels.shape[1] - margin_pixels, pixels.shape[2] - margin_pixels, window, max_crops)
    full, full_mask = resize_and_pad(pixels, (rows * window + margin_pixels, cols * window + margin_pixels), mean, std)
    crops, masks = [], []
    for i in range(rows):
        for j in range(cols):
            y, x = i * window, j * window
            crops.append(full[:, y : y + side, x : x + side])
            masks.append(_patch_means(full_mask[y : y + side, x : x + side], patch))
    global_crop, _ = resize_and_pad(pixels, (side, side), mean, std)
    crops.insert(0, global_crop)
    # The released preprocessing appends one row of -1 after the high-resolution crops' masks
    # instead of putting the global crop's mask first: reproduced as is.
    masks.append(torch.full_like(masks[0], -1.0))
    tokens, positions = _token_layout(rows, cols, geometry, window_patches, vision.patches_per_side, ids)
    return MolmoImage(
        pixels=torch.stack(crops),
        patch_masks=torch.stack(masks),
        tokens=tokens,
        feature_positions=positions,
        tiling=(rows, cols),
    )


def _patch_means(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """[S, S] pixel mask -> [P] mean per patch, raster order."""
    side = mask.shape[0] // patch
    return mask.reshape(side, patch, side, patch).mean(dim=(1, 3)).reshape(-1)


def _grid_segment(height: int, width: int, ids: ImageTokenIds) -> list[int]:
    return [ids.start] + ([ids.patch] * width + [ids.col]) * height + [ids.end]


def _token_layout(
    rows: int, cols: int, geometry: CropGeometry, window: int, patches: int, ids: ImageTokenIds
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the image segment and, per crop and pooled token, its index in the segment.

    Crop (i, j) keeps the pooled rows [first, first + count) of its `side x side` token grid:
    crops after the first skip half the left margin, and each keeps half its window plus half a
    margin at the image border. Kept rows and columns of all crops follow each other in order.
    """
    side = geometry.tokens_per_side
    margin_left, margin_right = geometry.margins

    def kept(index: int, count: int) -> tuple[int, int]:
        size = window + (margin_left if index == 0 else 0) + (margin_right if index == count - 1 else 0)
        return (0 if index == 0 else margin_left // 2), (size + 1) // 2

    row_spans, col_spans = [kept(i, rows) for i in range(rows)], [kept(j, cols) for j in range(cols)]
    height, width = sum(n for _, n in row_spans), sum(n for _, n in col_spans)
    expected = tuple((n * window + margin_left + margin_right + 1) // 2 for n in (rows, cols))
    if (height, width) != expected:
        raise ValueError(f"crop geometry {geometry} does not tile a {rows}x{cols} grid of {patches}-patch crops")
    tokens = _grid_segment(side, side, ids)
    offset = len(tokens) + 1  # the crops' segment follows the global one, after its <im_start>
    tokens += _grid_segment(height, width, ids)

    grid = torch.arange(side * (side + 1)).reshape(side, side + 1)[:, :side] + 1  # global: after <im_start>
    positions = [grid.reshape(-1)]
    row_start = 0
    for first_row, num_rows in row_spans:
        col_start = 0
        for first_col, num_cols in col_spans:
            crop = torch.full((side, side), -1, dtype=torch.long)
            r = torch.arange(num_rows)[:, None] + row_start
            c = torch.arange(num_cols)[None, :] + col_start
            crop[first_row : first_row + num_rows, first_col : first_col + num_cols] = offset + r * (width + 1) + c
            positions.append(crop.reshape(-1))
            col_start += num_cols
        row_start += num_rows
    return torch.tensor(tokens, dtype=torch.long), torch.stack(positions)
