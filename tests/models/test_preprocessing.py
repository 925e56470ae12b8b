import numpy as np
import pytest
import torch
from PIL import Image

from adactrl.models.preprocessing import CropConfig, crop_boxes, load_image, make_crops, to_rgb

CONFIG = CropConfig()  # 48 px images, 24 px crops, grids 0 / 2 / 3


def gradient_image(size: int = 48) -> Image.Image:
    """Every pixel distinct: red follows x, green follows y, blue is fixed."""
    x, y = np.meshgrid(np.arange(size), np.arange(size))
    pixels = np.stack([x * 5, y * 5, np.full_like(x, 100)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize(("tier", "crops"), [("low", 1), ("medium", 1 + 2 * 2), ("high", 1 + 3 * 3)])
def test_crops_per_tier(tier, crops):
    assert CONFIG.max_crops(tier) == crops
    tensor = make_crops(gradient_image(), tier, CONFIG)
    assert tensor.shape == (crops, 3, 24, 24)
    assert tensor.dtype == torch.float32


def test_unknown_tier_is_refused():
    with pytest.raises(ValueError, match=r"unknown tier 'ultra'.*\['low', 'medium', 'high'\]"):
        make_crops(gradient_image(), "ultra", CONFIG)


def test_pixel_values_span_minus_one_to_one():
    pixels = np.zeros((48, 48, 3), dtype=np.uint8)
    pixels[:, 24:] = 255  # left half black, right half white
    crops = make_crops(Image.fromarray(pixels), "high", CONFIG)
    # 0 / 127.5 - 1 = -1 and 255 / 127.5 - 1 = 1
    assert float(crops.min()) == -1.0
    assert float(crops.max()) == 1.0


def test_high_crops_are_native_resolution_windows():
    image = gradient_image()
    crops = make_crops(image, "high", CONFIG)
    native = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    # 3x3 grid of 24 px windows at offsets 0, 12, 24: crop 1 + (row * 3 + col) is native pixels
    for index, (left, top, right, bottom) in enumerate(crop_boxes(CONFIG, "high")):
        assert torch.equal(crops[1 + index], native[:, top:bottom, left:right])
    # the global crop is the whole image at half resolution, not any of the windows
    assert not torch.equal(crops[0], crops[1])


def test_global_crop_is_the_image_at_a_quarter_of_its_resolution():
    image = gradient_image()
    crops = make_crops(image, "low", CONFIG)
    assert crops.shape == (1, 3, 24, 24)
    # Shrunk to 12 px and back up: each 4x4 block of the image is one pixel of the shrunk view.
    quarter = np.asarray(image, dtype=np.float32).reshape(12, 4, 12, 4, 3).mean(axis=(1, 3))
    shrunk = torch.nn.functional.avg_pool2d(crops[:1], 2)[0]  # [3, 12, 12], undoing the 2x upsampling roughly
    assert torch.allclose(shrunk, torch.from_numpy(quarter).permute(2, 0, 1) / 127.5 - 1.0, atol=0.08)
    # A one-pixel checkerboard, like a glyph's strokes, averages to flat grey.
    checker = Image.fromarray(((np.indices((48, 48)).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")
    assert float(make_crops(checker, "low", CONFIG)[0].std()) < 0.02


def test_global_size_is_validated():
    with pytest.raises(ValueError, match="global_size 30 must lie between 1 and crop_size 24"):
        CropConfig(global_size=30)


@pytest.mark.parametrize("tier", ["medium", "high"])
def test_crop_boxes_cover_the_image(tier):
    boxes = crop_boxes(CONFIG, tier)
    grid = CONFIG.grid(tier)
    assert len(boxes) == grid * grid
    covered = np.zeros((48, 48), dtype=bool)
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 48 and 0 <= top < bottom <= 48
        assert right - left >= 24 and bottom - top >= 24
        covered[top:bottom, left:right] = True
    assert covered.all()


def test_crop_boxes_of_the_global_tier_are_empty():
    assert crop_boxes(CONFIG, "low") == []


def test_medium_crops_overlap():
    # window = max(24, round(48 * 1.25 / 2) = 30); step = 48 - 30 = 18 -> offsets 0 and 18
    assert crop_boxes(CONFIG, "medium") == [(0, 0, 30, 30), (18, 0, 48, 30), (0, 18, 30, 48), (18, 18, 48, 48)]


def test_crop_config_refuses_a_grid_that_cannot_cover_the_image():
    with pytest.raises(ValueError, match="cannot cover"):
        CropConfig(image_size=96, crop_size=24, tier_grids=(("low", 0), ("high", 3)))


def test_other_sizes_are_resized_first():
    image = gradient_image(100).resize((100, 60))
    assert make_crops(image, "medium", CONFIG).shape == (5, 3, 24, 24)


def test_to_rgb_converts_grey():
    grey = Image.new("L", (4, 4), 77)
    rgb = to_rgb(grey)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (77, 77, 77)


def test_to_rgb_converts_black_and_white():
    bits = Image.new("1", (4, 4), 1)
    assert to_rgb(bits).getpixel((2, 2)) == (255, 255, 255)


def test_to_rgb_converts_palette():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    assert to_rgb(palette).getpixel((1, 1)) == (10, 200, 30)


def test_to_rgb_composites_alpha_on_white():
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (200, 0, 0, 255))  # one opaque pixel
    rgb = to_rgb(rgba)
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (200, 0, 0)
    assert to_rgb(Image.new("LA", (2, 2), (40, 255))).getpixel((0, 0)) == (40, 40, 40)


def test_to_rgb_converts_cmyk():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)


def test_to_rgb_returns_rgb_unchanged():
    image = gradient_image()
    assert to_rgb(image) is image


@pytest.mark.parametrize("mode", ["I;16", "F", "I"])
def test_to_rgb_refuses_high_depth_modes(mode):
    with pytest.raises(ValueError, match=f"image mode '{mode}' is not supported"):
        to_rgb(Image.new(mode, (4, 4)))


def test_to_rgb_refuses_empty_images_and_non_images():
    with pytest.raises(ValueError, match="empty"):
        to_rgb(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="empty"):
        make_crops(Image.new("RGB", (0, 0)), "low", CONFIG)
    with pytest.raises(TypeError, match="ndarray"):
        to_rgb(np.zeros((4, 4, 3)))


def test_load_image_reads_a_png(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (48, 48), 128).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (48, 48)
    assert make_crops(image, "low", CONFIG).shape == (1, 3, 24, 24)  # usable after the file closed


def test_load_image_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere" / "cat.png"
    with pytest.raises(FileNotFoundError, match="cat.png"):
        load_image(str(path))


def test_load_image_corrupt_file_names_it(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(str(path))


def test_load_image_unsupported_mode_names_the_file(tmp_path):
    path = tmp_path / "deep.png"
    Image.new("I;16", (8, 8), 1000).save(path)
    with pytest.raises(ValueError, match=r"deep\.png.*not supported"):
        load_image(str(path))


def test_load_image_refuses_an_image_above_the_pixel_limit_before_decoding(tmp_path, monkeypatch):
    import adactrl.models.preprocessing as preprocessing

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(preprocessing, "MAX_IMAGE_PIXELS", 1000)  # 1,200 pixels is above it
    with pytest.raises(ValueError, match=f"cannot read image {path}: 40x30 pixels is above the limit of 1,000"):
        load_image(str(path))
    monkeypatch.setattr(preprocessing, "MAX_IMAGE_PIXELS", 1200)
    assert load_image(str(path)).size == (40, 30)
