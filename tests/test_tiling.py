"""Tiled sampling: the tile layout and weights, joint blending, exactness at the model's size, known pixels, errors."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from conftest import micro_config
from PIL import Image

from palette import Palette, PaletteError
from palette.cli import main
from palette.model import PaletteModel
from palette.conditions import make_condition, tiled_canvas
from palette.tiling import TiledDenoiser, tile_starts, tile_weights, window


@pytest.fixture(scope="module")
def palette(trained_run):
    return Palette.load(trained_run, device="cpu")


@pytest.mark.parametrize("length,tile,overlap", [(16, 16, 4), (17, 16, 4), (40, 16, 4), (100, 32, 8), (64, 16, 0),
                                                 (33, 16, 15)])
def test_tiles_span_the_image_and_share_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile and starts == sorted(starts)
    assert all(b - a <= tile - overlap for a, b in pairwise(starts))
    assert len(starts) == (1 if length == tile else math.ceil((length - overlap) / (tile - overlap)))


def test_the_window_is_positive_flat_inside_and_symmetric():
    w = window(16, 4)
    assert w.min() > 0 and torch.equal(w, w.T) and torch.equal(w, w.flip(0))
    assert (w[4:12, 4:12] == 1).all() and w[0, 8] < w[1, 8] < w[2, 8] < w[3, 8] < 1


@pytest.mark.parametrize("size", [(16, 16), (40, 56), (23, 70)])
def test_tile_weights_sum_to_one_at_every_pixel(size):
    total = torch.zeros(size, dtype=torch.float64)
    for top, left, weight in tile_weights(*size, 16, 5):
        assert weight.min() > 0
        total[top : top + 16, left : left + 16] += weight
    torch.testing.assert_close(total, torch.ones(size, dtype=torch.float64), atol=1e-6, rtol=0)
    if size == (16, 16):
        assert torch.equal(tile_weights(16, 16, 16, 5)[0][2], torch.ones(16, 16))  # exactly 1: one tile


def test_blending_a_pixelwise_denoiser_gives_that_denoiser():
    def pixelwise(x, y, gamma):
        return 2 * y - x + gamma[:, None, None, None]

    x, y, gamma = torch.randn(2, 3, 40, 56), torch.randn(2, 3, 40, 56), torch.tensor([0.3, 0.7])
    blended = TiledDenoiser(pixelwise, 16, 6, batch_size=5)(x, y, gamma)
    torch.testing.assert_close(blended, pixelwise(x, y, gamma), atol=1e-5, rtol=0)


def test_tiles_without_a_pixel_to_generate_are_skipped():
    seen = []

    def counting(x, y, gamma):
        seen.append(x.shape[0])
        return torch.zeros_like(y)

    mask = torch.zeros(1, 1, 64, 64)
    mask[:, :, 2:5, 2:5] = 1
    TiledDenoiser(counting, 16, 4, mask=mask)(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64), torch.ones(1))
    assert sum(seen) == 1 and len(tile_starts(64, 16, 4)) ** 2 == 25


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = PaletteModel(micro_config()).eval()
    for p in m.net.parameters():  # the zero-initialised output layers would make every sampler trivial
        p.data.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp-2m"])
def test_tiled_sampling_at_the_model_size_equals_untiled_sampling(model, sampler):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    mask = torch.zeros(3, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    for m, known in ((None, None), (mask, x)):
        plain = model.sample(x, m, known, steps=4, sampler=sampler, seeds=[1, 2, 3])
        tiled = model.sample(x, m, known, steps=4, sampler=sampler, seeds=[1, 2, 3], tile_overlap=4)
        assert torch.equal(plain, tiled)


def test_tiled_sampling_of_a_large_image_keeps_known_pixels(model):
    x = torch.rand(2, 3, 40, 56) * 2 - 1
    mask = torch.zeros(2, 1, 40, 56)
    mask[:, :, 10:14, 30:50] = 1
    out = model.sample(x, mask, x, steps=3, sampler="ddim", tile_overlap=4)
    assert out.shape == x.shape
    assert torch.equal(out * (1 - mask), x * (1 - mask))
    assert not torch.equal(out * mask, x * mask)


def test_images_smaller_than_the_model_are_scaled_up_for_tiling():
    assert tiled_canvas(40, 56, 16) == (40, 56)
    assert tiled_canvas(10, 30, 16) == (16, 48) and tiled_canvas(30, 12, 16) == (40, 16)


@pytest.mark.parametrize("task,kwargs,size", [("colorization", {}, (3, 40, 48)), ("jpeg", {}, (3, 40, 48)),
                                              ("inpainting", {"mask": "center"}, (3, 40, 48)),
                                              ("sr-x2", {}, (3, 80, 96)), ("denoising", {}, (3, 40, 48))])
def test_tiled_tasks_sample_at_the_images_own_size(palette, photo_dir, task, kwargs, size):
    photo = Image.open(photo_dir / "chelsea.png").convert("RGB")  # 48x40
    image = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float() / 255
    mask = kwargs.get("mask")
    model_size = palette.model.config.model.image_size
    condition = make_condition(model_size, task, image, np.random.default_rng(0), mask, tile_overlap=4)
    assert tuple(condition.x.shape) == size
    out = palette(photo, task, steps=2, tile=True, overlap=4, output="tensor", **kwargs)[0]
    assert out.shape == size
    if task == "inpainting":
        keep = torch.ones(40, 48, dtype=torch.bool)
        keep[10:30, 12:36] = False
        torch.testing.assert_close(out[:, keep], image[:, keep], atol=1e-6, rtol=0)


def test_a_tiled_run_on_an_image_of_the_model_size_equals_the_untiled_run(palette):
    image = torch.rand(3, 16, 16)
    for task, kwargs in (("colorization", {}), ("inpainting", {"mask": "center"}), ("deblurring", {})):
        plain = palette(image, task, steps=3, seed=2, output="tensor", **kwargs)[0]
        tiled = palette(image, task, steps=3, seed=2, output="tensor", tile=True, **kwargs)[0]
        assert torch.equal(plain, tiled)


def test_a_hole_larger_than_a_tile_is_warned_about(palette, caplog):
    mask = np.zeros((48, 48), bool)
    mask[4:44, 4:44] = True
    with caplog.at_level("WARNING"):
        palette.inpaint(torch.rand(3, 48, 48), mask, steps=1, tile=True)
    assert "covers a whole 16 px tile" in caplog.text


@pytest.mark.parametrize("call,match", [
    (lambda p, img: p.uncrop(img, tile=True), "uncropping .* cannot be sampled in tiles"),
    (lambda p, img: p.colorize(img, overlap=4), "overlap is the overlap of tiles: it needs tile"),
    (lambda p, img: p.colorize(img, tile=True, overlap=16), "overlap must be between 0 and 15"),
])
def test_tiling_errors(palette, call, match):
    with pytest.raises(PaletteError, match=match):
        call(palette, torch.rand(3, 32, 32))


def test_the_command_samples_in_tiles(capsys, tmp_path, trained_run, photo_dir):
    code = main(["sample", "--checkpoint", str(trained_run), "--task", "jpeg", "--input", str(photo_dir / "coffee.png"),
                 "--tile", "--overlap", "6", "--steps", "2", "--sampler", "ddim", "--out", str(tmp_path), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "coffee_0.png").size == (48, 40)
    code = main(["sample", "--checkpoint", str(trained_run), "--task", "jpeg", "--input", str(photo_dir / "coffee.png"),
                 "--overlap", "6", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--overlap is the overlap of tiles: it needs --tile" in err
