"""Dense auxiliary supervision for pretraining the embedded model: what lies under each image token.

The answer loss alone reaches the vision tower through 16 blocks and one answer token per
question, so on a CPU budget the tower learns colour and little else. The synthetic generator
knows its scene layout, so every image token gets direct targets too, computed from the pixel
region the token covers in its crop (the global crop covers the whole image):

- `pairs` [T, 18]: an object of this (colour, shape) has its box centre in the region, so that
  counts and colour-and-shape conjunctions are sums over tokens;
- `big` [T]: a big object's centre is in the region (the colour and shape families ask about it);
- `colors` [T, 6]: an object of this colour covers a fair part of the region;
- `digit` [T]: the digit whose box centre is in the region, NO_DIGIT where there is none, and
  IGNORE where the crop cuts the box (a cut glyph is not legible, so it is not a target).

Heads read the projected image tokens (what the language model sees), so these targets shape
exactly the features the blocks attend to. The heads are training-only and never shipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adactrl.data.synthetic import COLOR_NAMES, DIGITS, SHAPES, SyntheticSample
from adactrl.models.preprocessing import CropConfig, crop_boxes

PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOR_NAMES for s in SHAPES)
NO_DIGIT = len(DIGITS)
IGNORE = -100
_COVER = 0.25
"""A colour counts as present in a region when its object's box covers this share of the region
or half of the object's own box, whichever is smaller."""

_POSITIVE_WEIGHT = 5.0

Region = tuple[float, float, float, float]


@dataclass(frozen=True)
class TokenTargets:
    """Targets for a batch of images at one tier: T = image tokens per image."""

    pairs: torch.Tensor  # [B, T, 18] float
    big: torch.Tensor  # [B, T] float
    colors: torch.Tensor  # [B, T, 6] float
    digit: torch.Tensor  # [B, T] long


def token_regions(config: CropConfig, tier: str, side: int) -> list[tuple[Region, Region]]:
    """Per image token in model order (crop-major, then row-major), the pixel region it covers
    and the box of its crop, both in image coordinates."""
    full = (0.0, 0.0, float(config.image_size), float(config.image_size))
    crops = [full, *[tuple(float(v) for v in box) for box in crop_boxes(config, tier)]]
    regions = []
    for left, top, right, bottom in crops:
        w, h = (right - left) / side, (bottom - top) / side
        for r in range(side):
            for c in range(side):
                region = (left + c * w, top + r * h, left + (c + 1) * w, top + (r + 1) * h)
                regions.append((region, (left, top, right, bottom)))
    return regions


def _contains(region: Region, x: float, y: float) -> bool:
    return region[0] <= x < region[2] and region[1] <= y < region[3]


def _overlap(a: Region, b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def _area(box: Sequence[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def token_targets(samples: Sequence[SyntheticSample], config: CropConfig, tier: str, side: int) -> TokenTargets:
    """Dense targets of every image token for these samples at this tier."""
    regions = token_regions(config, tier, side)
    scale = config.image_size / samples[0].image.width if samples else 1.0
    pairs = torch.zeros(len(samples), len(regions), len(PAIRS))
    big = torch.zeros(len(samples), len(regions))
    colors = torch.zeros(len(samples), len(regions), len(COLOR_NAMES))
    digit = torch.full((len(samples), len(regions)), NO_DIGIT, dtype=torch.long)
    for b, sample in enumerate(samples):
        for obj in sample.objects:
            box = tuple(v * scale for v in obj.box)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            pair, color = PAIRS.index((obj.color, obj.shape)), COLOR_NAMES.index(obj.color)
            for t, (region, _) in enumerate(regions):
                if _contains(region, cx, cy):
                    pairs[b, t, pair] = 1.0
                    if obj.big:
                        big[b, t] = 1.0
                if _overlap(region, box) >= min(_COVER * _area(region), 0.5 * _area(box)):
                    colors[b, t, color] = 1.0
        if sample.digit_box is not None and sample.digit is not None:
            box = tuple(v * scale for v in sample.digit_box)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            for t, (region, crop) in enumerate(regions):
                if _contains(region, cx, cy):
                    whole = _overlap(crop, box) == _area(box)
                    digit[b, t] = DIGITS.index(sample.digit) if whole else IGNORE
    return TokenTargets(pairs, big, colors, digit)


class DenseHeads(nn.Module):
    """Linear read-outs of the dense targets from projected image tokens."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.pairs = nn.Linear(hidden_size, len(PAIRS))
        self.big = nn.Linear(hidden_size, 1)
        self.colors = nn.Linear(hidden_size, len(COLOR_NAMES))
        self.digit = nn.Linear(hidden_size, NO_DIGIT + 1)

    def loss(self, tokens: torch.Tensor, targets: TokenTargets) -> tuple[torch.Tensor, dict[str, float]]:
        """tokens [B, T, d] -> the summed loss and, per target, an accuracy to log."""
        pairs, big = self.pairs(tokens), self.big(tokens).squeeze(-1)
        colors, digit = self.colors(tokens), self.digit(tokens)
        # Positives are rare (a few object centres among up to 90 tokens, one digit per sixth
        # image): up-weight them so the heads do not settle on "nothing here".
        positive = torch.tensor(_POSITIVE_WEIGHT)
        digit_weights = torch.ones(NO_DIGIT + 1)
        digit_weights[NO_DIGIT] = 1.0 / _POSITIVE_WEIGHT
        loss = (
            F.binary_cross_entropy_with_logits(pairs, targets.pairs, pos_weight=positive)
            + F.binary_cross_entropy_with_logits(big, targets.big, pos_weight=positive)
            + F.binary_cross_entropy_with_logits(colors, targets.colors)
            + F.cross_entropy(
                digit.flatten(0, 1), targets.digit.flatten(), weight=digit_weights, ignore_index=IGNORE
            )
        )
        with torch.no_grad():
            stats = {"pairs_f1": _f1(pairs > 0, targets.pairs > 0.5), "colors_f1": _f1(colors > 0, targets.colors > 0.5)}
            shown = (targets.digit != IGNORE) & (targets.digit != NO_DIGIT)
            if shown.any():
                stats["digit_acc"] = float((digit.argmax(-1)[shown] == targets.digit[shown]).float().mean())
        return loss, stats


def _f1(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    hits = float((predicted & actual).sum())
    return 2 * hits / max(1.0, float(predicted.sum() + actual.sum()))
