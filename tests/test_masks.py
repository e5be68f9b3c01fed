"""Masks: coverage and the paper's mixing probabilities, for any image size."""

import numpy as np
import pytest

from palette import masks


def _binomial_ok(count, n, p, z=4.5):
    return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("h,w", [(64, 64), (48, 80), (256, 256)])
def test_rectangles_cover_10_to_40_percent_with_1_to_5_boxes(h, w):
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = masks.rectangles_mask(h, w, rng)
        assert mask.shape == (h, w)
        assert 0.10 <= masks.coverage(mask) <= 0.40


def test_training_masks_are_free_form_with_probability_0_6():
    rng = np.random.default_rng(1)
    n = 1500
    kinds = [masks.training_inpainting_mask(32, 32, rng)[1] for _ in range(n)]
    assert set(kinds) == {"freeform", "rectangles"}
    assert _binomial_ok(kinds.count("freeform"), n, 0.6)


@pytest.mark.parametrize("name", ["freeform-10-20", "freeform-20-30", "freeform-30-40"])
@pytest.mark.parametrize("h,w", [(64, 64), (96, 64)])
def test_evaluation_free_form_masks_have_the_named_coverage(name, h, w):
    low, high = masks.EVAL_FREE_FORM_RANGES[name.split("-", 1)[1]]
    rng = np.random.default_rng(2)
    for _ in range(10):
        mask = masks.named_mask(name, h, w, rng)
        assert mask.shape == (h, w) and low <= masks.coverage(mask) <= high


def test_free_form_masks_are_seeded():
    a = masks.free_form_mask(64, 64, np.random.default_rng(5))
    b = masks.free_form_mask(64, 64, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.any()


def test_center_mask_is_the_quarter_offset_half_box():
    mask = masks.center_mask(256, 256)
    assert mask[64:192, 64:192].all() and mask.sum() == 128 * 128


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_one_side_uncropping_generates_exactly_half(side):
    mask = masks.uncrop_mask(64, 96, side)
    assert masks.coverage(mask) == 0.5
    edge = {"left": mask[:, 0], "right": mask[:, -1], "top": mask[0], "bottom": mask[-1]}[side]
    assert edge.all()


@pytest.mark.parametrize("h,w", [(64, 64), (256, 256), (50, 90)])
def test_all_sides_uncropping_generates_about_half(h, w):
    mask = masks.uncrop_mask(h, w, "all")
    assert masks.coverage(mask) == pytest.approx(0.5, abs=0.02)
    assert mask[0].all() and mask[-1].all() and mask[:, 0].all() and mask[:, -1].all()
    assert not mask[h // 2, w // 2]


def test_uncropping_sides_follow_the_paper_mix():
    rng = np.random.default_rng(3)
    n = 4000
    sides = [masks.training_uncrop_side(rng) for _ in range(n)]
    assert _binomial_ok(sides.count("all"), n, 0.5)
    for side in masks.UNCROP_SIDES:
        assert _binomial_ok(sides.count(side), n, 0.125)


def test_unknown_mask_name_is_an_error():
    with pytest.raises(ValueError, match="unknown mask"):
        masks.named_mask("blob", 8, 8, np.random.default_rng(0))


def test_training_free_form_masks_are_deepfillv2_brush_strokes():
    """DeepFillv2's released generator: 1-3 strokes, each of 4-11 segments, 12-39 px wide at 256x256."""
    rng = np.random.default_rng(6)
    draws = [masks.deepfill_strokes(256, 256, rng) for _ in range(400)]
    assert {len(strokes) for strokes in draws} == {1, 2, 3}
    assert {len(s.points) - 1 for strokes in draws for s in strokes} == set(range(4, 12))
    assert {s.width for strokes in draws for s in strokes} <= set(range(12, 40))
    assert all(0 <= x <= 256 and 0 <= y <= 256 for strokes in draws for s in strokes for x, y in s.points)


def test_a_stroke_draws_its_window_of_angles_once():
    """Each stroke's segments turn within one window [mean - U(0, range), mean + U(0, range)] (not each within the
    full [mean - range, mean + range]): the spread of n uniform angles in a window of width U1 + U2 has mean
    E[U1 + U2] (n - 1) / (n + 1) = range (n - 1) / (n + 1). Measured on a canvas so large nothing is clipped."""
    rng = np.random.default_rng(7)
    size = 100_000
    spreads, expected = [], []
    while len(spreads) < 300:
        for stroke in masks.deepfill_strokes(size, size, rng):
            if any(not (0 < x < size and 0 < y < size) for x, y in stroke.points):
                continue
            steps = np.diff(np.array(stroke.points, dtype=float), axis=0)
            angles = np.arctan2(steps[:, 1], steps[:, 0]) % (2 * np.pi)
            unfolded = np.where(np.arange(len(angles)) % 2 == 0, 2 * np.pi - angles, angles)
            unfolded = unfolded[np.linalg.norm(steps, axis=1) > 100]  # a length clipped to 0 has no direction
            assert np.all(np.abs(unfolded - masks.DEEPFILL_MEAN_ANGLE) <= masks.DEEPFILL_ANGLE_RANGE + 1e-3)
            spreads.append(unfolded.max() - unfolded.min())
            n = len(unfolded)
            expected.append(masks.DEEPFILL_ANGLE_RANGE * (n - 1) / (n + 1))
    standard_error = np.std(spreads) / np.sqrt(len(spreads))
    assert abs(np.mean(spreads) - np.mean(expected)) < 4 * standard_error


def test_a_free_form_mask_is_its_strokes_drawn():
    strokes = masks.deepfill_strokes(64, 96, np.random.default_rng(8))
    mask = masks.free_form_mask(64, 96, np.random.default_rng(8))
    assert mask.shape == (64, 96) and np.array_equal(mask, masks.draw_strokes(64, 96, strokes))
    for stroke in strokes:
        for x, y in stroke.points:
            if x < 96 and y < 64:
                assert mask[y, x]
