"""Degradations: what x is for each task, and the distributions of their random parameters."""

import numpy as np
import pytest
import torch

from palette.tasks import (
    Colorization, Inpainting, JpegRestoration, MultiTask, Uncropping, jpeg_compress, jpeg_quality_distribution,
    luma, make_task,
)


@pytest.fixture
def image():
    import skimage.data
    from palette.data import resize

    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    return resize(photo, 64) * 2 - 1


def test_colorization_input_is_the_bt601_luma_on_every_channel(image):
    s = Colorization()(image, np.random.default_rng(0))
    expected = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    for c in range(3):
        torch.testing.assert_close(s.x[c], expected)
    assert s.mask.shape == (1, 64, 64) and s.mask.min() == 1
    assert torch.equal(s.y, image)


def test_colorization_refuses_single_channel_models():
    with pytest.raises(ValueError, match="3-channel"):
        Colorization().check_channels(1)


def test_inpainting_keeps_known_pixels_and_fills_the_hole_with_standard_noise(image):
    s = Inpainting()(image, np.random.default_rng(0))
    keep = s.mask == 0
    assert torch.equal(s.x[keep.expand_as(s.x)], image[keep.expand_as(image)])
    hole = s.x[(~keep).expand_as(s.x)]
    n = hole.numel()
    assert n > 100
    assert abs(hole.mean().item()) < 5 / np.sqrt(n) and abs(hole.std().item() - 1) < 5 / np.sqrt(2 * n)
    assert s.info["mask_kind"] in ("freeform", "rectangles")


def test_uncropping_masks_half_the_image(image):
    s = Uncropping()(image, np.random.default_rng(0))
    assert s.mask.mean().item() == pytest.approx(0.5, abs=0.02)
    assert s.info["side"] in ("left", "right", "top", "bottom", "all")


def test_jpeg_qualities_follow_exp_minus_q_over_10():
    task = JpegRestoration()
    rng = np.random.default_rng(0)
    n = 20_000
    draws = np.array([task.draw(8, 8, rng)["quality"] for _ in range(n)])
    assert draws.min() >= 5 and draws.max() <= 30
    q = np.arange(5, 31)
    p = np.exp(-q / 10) / np.exp(-q / 10).sum()
    counts = np.array([(draws == v).sum() for v in q])
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < 55  # chi-square with 25 degrees of freedom: P(chi2 > 55) < 0.1%
    qualities, probabilities = jpeg_quality_distribution()
    assert list(qualities) == list(q) and probabilities.sum() == pytest.approx(1)


def test_lower_jpeg_quality_loses_more(image):
    errors = [(jpeg_compress(image, q) - image).abs().mean().item() for q in (5, 10, 20, 30, 90)]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0


def test_jpeg_task_input_is_the_compressed_image(image):
    s = JpegRestoration()(image, np.random.default_rng(0))
    torch.testing.assert_close(s.x, jpeg_compress(image, s.info["quality"]))


def test_jpeg_works_on_single_channel_images(image):
    gray = luma(image)
    assert jpeg_compress(gray, 10).shape == gray.shape


def test_same_seed_same_example(image):
    for name in ("inpainting", "uncropping", "jpeg", "colorization"):
        a = make_task(name)(image, np.random.default_rng(7))
        b = make_task(name)(image, np.random.default_rng(7))
        assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask)


def test_multi_task_mixes_tasks_by_weight(image):
    small = image[:, :16, :16]
    task = MultiTask([Colorization(), JpegRestoration()], weights=[1, 3])
    rng = np.random.default_rng(0)
    names = [task(small, rng).info["task"] for _ in range(800)]
    p = 0.25
    assert abs(names.count("colorization") - 800 * p) < 4.5 * np.sqrt(800 * p * (1 - p))


def test_masks_are_drawn_at_the_image_size():
    image = torch.zeros(3, 40, 72)
    for name in ("inpainting", "uncropping"):
        s = make_task(name)(image, np.random.default_rng(0))
        assert s.mask.shape == (1, 40, 72) and s.x.shape == (3, 40, 72)


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown task"):
        make_task("deblur")
