"""Degradations: what x is for each task, and the distributions of their random parameters."""

import numpy as np
import pytest
import torch

from palette.tasks import (
    TASK_NAMES, Colorization, Deblurring, Denoising, Inpainting, JpegRestoration, MultiTask, SuperResolution,
    Uncropping, blur, gaussian_kernel, jpeg_compress, jpeg_quality_distribution, luma, make_task, motion_kernel,
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


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_example(image, name):
    a = make_task(name)(image, np.random.default_rng(7))
    b = make_task(name)(image, np.random.default_rng(7))
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask) and a.info == b.info
    if name not in ("colorization", "sr-x2", "sr-x4"):  # the others draw random parameters
        c = make_task(name)(image, np.random.default_rng(8))
        assert not torch.equal(a.x, c.x) or a.info != c.info


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


def _pil_bicubic(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's bicubic resize of each float channel, clamped to the input's range as palette's resize does."""
    from PIL import Image

    channels = [np.asarray(Image.fromarray(c.numpy(), "F").resize((w, h), Image.BICUBIC)) for c in image]
    return torch.from_numpy(np.stack(channels)).clamp(float(image.min()), float(image.max()))


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_input_is_bicubic_down_then_up_as_in_pil(image, factor):
    s = make_task(f"sr-x{factor}")(image, np.random.default_rng(0))
    expected = _pil_bicubic(_pil_bicubic(image, 64 // factor, 64 // factor), 64, 64)
    torch.testing.assert_close(s.x, expected, atol=2e-6, rtol=0)
    assert s.info == {"task": f"sr-x{factor}", "factor": factor} and s.mask.min() == 1


def test_super_resolution_loses_detail_that_grows_with_the_factor(image):
    errors = [(SuperResolution(f)(image, np.random.default_rng(0)).x - image).abs().mean().item() for f in (2, 4)]
    assert 0 < errors[0] < errors[1]


def test_super_resolution_outputs_are_factor_times_larger_at_inference():
    assert (SuperResolution(2).scale, SuperResolution(4).scale, Deblurring().scale, Denoising().scale) == (2, 4, 1, 1)


def _kernels(n=60):
    task, rng = Deblurring(), np.random.default_rng(0)
    return [task.draw(64, 64, rng) for _ in range(n)]


def _moments(kernel):
    r = kernel.shape[0] // 2
    v, u = np.mgrid[-r : r + 1, -r : r + 1]
    mean = np.array([(kernel * u).sum(), (kernel * v).sum()])
    cov = np.array([[(kernel * u * u).sum(), (kernel * u * v).sum()], [(kernel * u * v).sum(), (kernel * v * v).sum()]])
    return mean, cov


def test_blur_kernels_are_non_negative_centred_and_sum_to_one():
    draws = _kernels()
    assert {d["blur"] for d in draws} == {"gaussian", "motion"}
    for d in draws:
        k = d["kernel"]
        mean, _ = _moments(k)
        assert k.min() >= 0 and k.sum() == pytest.approx(1, abs=1e-12) and k.shape[0] == k.shape[1] and k.shape[0] % 2
        np.testing.assert_allclose(mean, 0, atol=1e-9)


def test_gaussian_kernels_have_the_drawn_covariance():
    # By Poisson summation a Gaussian sampled on the integer grid keeps its covariance to within
    # 8 pi^2 sigma^4 exp(-2 pi^2 sigma^2) < 1e-3 relative for sigma >= 0.8; truncation at 4 sigma loses < 0.2%.
    for d in (d for d in _kernels() if d["blur"] == "gaussian"):
        (s1, s2), a = d["sigma"], d["angle"]
        rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        expected = rotation @ np.diag([s1**2, s2**2]) @ rotation.T
        np.testing.assert_allclose(_moments(d["kernel"])[1], expected, atol=0.005 * max(s1, s2) ** 2)


def test_motion_kernels_spread_along_their_direction_by_their_length():
    # n points evenly spread over a segment of length L have variance L^2 (n^2 - 1) / (12 n^2) along it; a bilinear
    # splat adds f (1 - f) <= 1/4 per axis to each point, so the variance along lies within +1/4 of that and the
    # variance across within [0, 1/4].
    for length, angle in ((3.0, 0.0), (7.5, 0.4), (15.0, 2.0), (10.0, np.pi / 2)):
        _, cov = _moments(motion_kernel(length, angle))
        along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        n = int(np.ceil(length * 8))
        segment = length**2 * (n**2 - 1) / (12 * n**2)
        assert segment <= along @ cov @ along <= segment + 0.25
        assert 0 <= across @ cov @ across <= 0.25


def _gradient_energy(image):
    return (image.diff(dim=1) ** 2).mean().item() + (image.diff(dim=2) ** 2).mean().item()


def test_blurring_keeps_the_mean_and_lowers_the_high_frequency_energy(image):
    for n, d in enumerate(_kernels(20)):
        s = Deblurring().condition(image, np.random.default_rng(n), kernel=d["kernel"])[0]
        assert _gradient_energy(s) < 0.7 * _gradient_energy(image)
        assert s.mean().item() == pytest.approx(image.mean().item(), abs=0.01)  # replicated borders move it slightly


def test_blur_is_a_convolution_with_the_kernel():
    impulse = torch.zeros(1, 31, 31)
    impulse[0, 15, 15] = 1
    k = motion_kernel(9.0, 0.7)
    r = k.shape[0] // 2
    torch.testing.assert_close(blur(impulse, k)[0, 15 - r : 16 + r, 15 - r : 16 + r], torch.from_numpy(k).float())
    assert gaussian_kernel(1.0, 1.0, 0.3).shape == (9, 9)


def test_denoising_residual_has_the_drawn_standard_deviation():
    flat = torch.zeros(3, 64, 64)  # mid grey: with sigma <= 50/255 the clip at +-1 (2.5 sigma) barely matters
    task, rng = Denoising(sigma_range=(5, 25)), np.random.default_rng(0)
    n = flat.numel()
    for _ in range(10):
        s = task(flat, rng)
        expected = 2 * s.info["sigma"] / 255  # 8-bit levels in [-1, 1] units
        residual = s.x - flat
        assert abs(residual.mean().item()) < 5 * expected / np.sqrt(n)
        assert residual.std().item() == pytest.approx(expected, rel=5 / np.sqrt(2 * n))


def test_denoising_sigma_is_uniform_over_its_range():
    rng, task = np.random.default_rng(0), Denoising()
    sigmas = np.array([task.draw(8, 8, rng)["sigma"] for _ in range(4000)])
    assert sigmas.min() >= 5 and sigmas.max() <= 50
    counts, _ = np.histogram(sigmas, bins=9, range=(5, 50))
    expected = len(sigmas) / 9
    assert ((counts - expected) ** 2 / expected).sum() < 26  # chi-square, 8 degrees of freedom: P > 26 is 0.1%


@pytest.mark.parametrize("name", ["sr-x2", "sr-x4", "deblurring", "denoising"])
def test_restoration_tasks_take_their_input_as_it_is_at_inference(image, name):
    x, mask = make_task(name).condition(image, np.random.default_rng(0))
    assert torch.equal(x, image) and mask.min() == 1


def test_new_tasks_mix_in_a_multi_task():
    task = make_task("multi", ("sr-x4", "deblurring", "denoising", "colorization"))
    rng = np.random.default_rng(0)
    seen = {task(torch.zeros(3, 16, 16), rng).info["task"] for _ in range(60)}
    assert seen == {"sr-x4", "deblurring", "denoising", "colorization"}
