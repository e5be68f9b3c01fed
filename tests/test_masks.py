"""Masks: coverage and the paper's mixing probabilities, for any image size."""

import numpy as np
import pytest

from palette import masks as M


def _binomial_ok(count, n, p, z=4.5):
    return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("h,w", [(64, 64), (48, 80), (256, 256)])
def test_rectangles_cover_10_to_40_percent_with_1_to_5_boxes(h, w):
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = M.rectangles_mask(h, w, rng)
        assert mask.shape == (h, w)
        assert 0.10 <= M.coverage(mask) <= 0.40


def test_training_masks_are_free_form_with_probability_0_6():
    rng = np.random.default_rng(1)
    n = 1500
    kinds = [M.training_inpainting_mask(32, 32, rng)[1] for _ in range(n)]
    assert set(kinds) == {"freeform", "rectangles"}
    assert _binomial_ok(kinds.count("freeform"), n, 0.6)


@pytest.mark.parametrize("name", ["freeform-10-20", "freeform-20-30", "freeform-30-40"])
@pytest.mark.parametrize("h,w", [(64, 64), (96, 64)])
def test_evaluation_free_form_masks_have_the_named_coverage(name, h, w):
    low, high = M.EVAL_FREE_FORM_RANGES[name.split("-", 1)[1]]
    rng = np.random.default_rng(2)
    for _ in range(10):
        mask = M.named_mask(name, h, w, rng)
        assert mask.shape == (h, w) and low <= M.coverage(mask) <= high


def test_free_form_masks_are_seeded():
    a = M.free_form_mask(64, 64, np.random.default_rng(5))
    b = M.free_form_mask(64, 64, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.any()


def test_center_mask_is_the_quarter_offset_half_box():
    mask = M.center_mask(256, 256)
    assert mask[64:192, 64:192].all() and mask.sum() == 128 * 128


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_one_side_uncropping_generates_exactly_half(side):
    mask = M.uncrop_mask(64, 96, side)
    assert M.coverage(mask) == 0.5
    edge = {"left": mask[:, 0], "right": mask[:, -1], "top": mask[0], "bottom": mask[-1]}[side]
    assert edge.all()


@pytest.mark.parametrize("h,w", [(64, 64), (256, 256), (50, 90)])
def test_all_sides_uncropping_generates_about_half(h, w):
    mask = M.uncrop_mask(h, w, "all")
    assert M.coverage(mask) == pytest.approx(0.5, abs=0.02)
    assert mask[0].all() and mask[-1].all() and mask[:, 0].all() and mask[:, -1].all()
    assert not mask[h // 2, w // 2]


def test_uncropping_sides_follow_the_paper_mix():
    rng = np.random.default_rng(3)
    n = 4000
    sides = [M.training_uncrop_side(rng) for _ in range(n)]
    assert _binomial_ok(sides.count("all"), n, 0.5)
    for side in M.UNCROP_SIDES:
        assert _binomial_ok(sides.count(side), n, 0.125)


def test_unknown_mask_name_is_an_error():
    with pytest.raises(ValueError, match="unknown mask"):
        M.named_mask("blob", 8, 8, np.random.default_rng(0))
