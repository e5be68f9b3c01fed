"""Masks for inpainting and uncropping: boolean (H, W) arrays, True where the model must generate.

Every generator takes the image's own height and width (masks are drawn for the actual size, any size) and a
``numpy.random.Generator`` so that a seed fixes the mask. Stroke lengths and widths are given for 256x256 and
scale with the image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

FREE_FORM_PROBABILITY = 0.6  # the paper: free-form strokes with p = 0.6, rectangles with p = 0.4
RECTANGLE_COVERAGE = (0.10, 0.40)
EVAL_FREE_FORM_RANGES = {"10-20": (0.10, 0.20), "20-30": (0.20, 0.30), "30-40": (0.30, 0.40)}
UNCROP_SIDES = ("left", "right", "top", "bottom")
# DeepFillv2's brush strokes (its released code's brush_stroke_mask): 1-3 strokes of 4-11 segments, width 12-40 px
DEEPFILL_MAX_STROKES = 3
DEEPFILL_VERTICES = (4, 11)
DEEPFILL_WIDTH = (12, 40)
DEEPFILL_MEAN_ANGLE, DEEPFILL_ANGLE_RANGE = 2 * math.pi / 5, 2 * math.pi / 15


def coverage(mask: np.ndarray) -> float:
    """Fraction of pixels to generate."""
    return float(np.mean(mask))


@dataclass(frozen=True)
class BrushStroke:
    """One brush stroke: a polyline through ``points`` ((x, y) pixels) drawn ``width`` pixels wide."""

    points: tuple[tuple[int, int], ...]
    width: int


def deepfill_strokes(h: int, w: int, rng: np.random.Generator) -> list[BrushStroke]:
    """The strokes of one DeepFillv2 training mask (Yu et al. 2019; ``brush_stroke_mask`` of its released code).

    1-3 strokes of 4-11 segments; each stroke draws its angle window [mean - U(0, range), mean + U(0, range)] once and
    every segment's angle from it (alternately mirrored), segment lengths ~ N(r, r // 2) clipped to [0, 2r] with
    r = sqrt(h^2 + w^2) / 8, integer vertices clipped to the image, width int(U(12, 40)) at 256 px (scaled with the
    image). The draws and their order are the original's, so at 256x256 a seed gives its masks.
    """
    unit = min(h, w) / 256.0
    radius = math.hypot(h, w) / 8
    strokes = []
    for _ in range(int(rng.integers(1, DEEPFILL_MAX_STROKES + 1))):
        num_vertex = int(rng.integers(DEEPFILL_VERTICES[0], DEEPFILL_VERTICES[1] + 1))
        angle_min = DEEPFILL_MEAN_ANGLE - rng.uniform(0, DEEPFILL_ANGLE_RANGE)
        angle_max = DEEPFILL_MEAN_ANGLE + rng.uniform(0, DEEPFILL_ANGLE_RANGE)
        angles = [rng.uniform(angle_min, angle_max) for _ in range(num_vertex)]
        angles = [2 * math.pi - a if i % 2 == 0 else a for i, a in enumerate(angles)]
        # (DeepFillv2 reads PIL's (width, height) as (h, w): the same for its square crops; here x spans the width)
        points = [(int(rng.integers(0, w)), int(rng.integers(0, h)))]
        for angle in angles:
            length = np.clip(rng.normal(radius, radius // 2), 0, 2 * radius)
            x = int(np.clip(points[-1][0] + length * math.cos(angle), 0, w))
            y = int(np.clip(points[-1][1] + length * math.sin(angle), 0, h))
            points.append((x, y))
        width = max(1, int(rng.uniform(*DEEPFILL_WIDTH) * unit))
        strokes.append(BrushStroke(tuple(points), width))
    return strokes


def draw_strokes(h: int, w: int, strokes: list[BrushStroke]) -> np.ndarray:
    """The (h, w) mask of ``strokes``: each polyline with round joints (a disc of the brush at every vertex)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        draw.line(list(stroke.points), fill=1, width=stroke.width)
        half = stroke.width // 2
        for x, y in stroke.points:
            draw.ellipse((x - half, y - half, x + half, y + half), fill=1)
    return np.asarray(canvas, dtype=bool).copy()


def free_form_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A training mask of DeepFillv2's brush strokes (:func:`deepfill_strokes`), unflipped.

    DeepFillv2's code means to flip the mask at random but drops the flipped image (``mask.transpose(...)`` unused),
    so its masks never are; neither are these.
    """
    return draw_strokes(h, w, deepfill_strokes(h, w, rng))


def _evaluation_stroke(draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
    """One stroke of the evaluation masks: 4-12 vertices, an angle drawn per vertex, width U(12, 40) at 256 px.

    palette's first free-form generator, kept for the ``freeform-*`` evaluation masks so that their masks (and
    evaluations already on disk, resumed or compared) stay the same.
    """
    unit = min(h, w) / 256.0
    num_vertex = int(rng.integers(4, 13))
    mean_angle, angle_range = DEEPFILL_MEAN_ANGLE, DEEPFILL_ANGLE_RANGE
    width = max(1, int(round(rng.uniform(12, 40) * unit)))
    radius = math.hypot(h, w) / 8
    angles = []
    for i in range(num_vertex):
        angle = rng.uniform(mean_angle - angle_range, mean_angle + angle_range)
        angles.append(2 * math.pi - angle if i % 2 == 0 else angle)
    points = [(float(rng.integers(0, w)), float(rng.integers(0, h)))]
    for angle in angles:
        length = np.clip(rng.normal(radius, radius / 2), 0, 2 * radius)
        x = float(np.clip(points[-1][0] + length * math.cos(angle), 0, w))
        y = float(np.clip(points[-1][1] + length * math.sin(angle), 0, h))
        points.append((x, y))
    draw.line(points, fill=1, width=width)
    for x, y in points:
        draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=1)


def free_form_mask_with_coverage(h: int, w: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Evaluation brush strokes (:func:`_evaluation_stroke`) added one at a time until the coverage lies in
    [low, high]; an overshoot starts again."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"coverage range must satisfy 0 <= low < high <= 1, got ({low}, {high})")
    for _ in range(10_000):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(64):
            _evaluation_stroke(draw, h, w, rng)
            mask = np.asarray(canvas, dtype=bool)
            c = coverage(mask)
            if c > high:
                break
            if c >= low:
                return mask.copy()
    raise RuntimeError(f"could not draw a free-form mask with coverage in [{low}, {high}] for {h}x{w}")


def rectangles_mask(
    h: int, w: int, rng: np.random.Generator, max_rectangles: int = 5, coverage_range=RECTANGLE_COVERAGE
) -> np.ndarray:
    """1 to ``max_rectangles`` axis-aligned boxes whose union covers a fraction of the image in ``coverage_range``.

    The union's target coverage is drawn uniformly in the range; box sides are drawn so that their areas add up to
    about that target, and a draw outside the range is rejected.
    """
    low, high = coverage_range
    for _ in range(10_000):
        n = int(rng.integers(1, max_rectangles + 1))
        target = rng.uniform(low, high)
        mask = np.zeros((h, w), dtype=bool)
        shares = rng.dirichlet(np.ones(n)) * target
        for share in shares:
            aspect = math.exp(rng.uniform(-math.log(3), math.log(3)))
            bh = int(round(min(h, math.sqrt(share * h * w * aspect))))
            bw = int(round(min(w, share * h * w / max(bh, 1))))
            if bh < 1 or bw < 1:
                continue
            top = int(rng.integers(0, h - bh + 1))
            left = int(rng.integers(0, w - bw + 1))
            mask[top : top + bh, left : left + bw] = True
        if low <= coverage(mask) <= high:
            return mask
    raise RuntimeError(f"could not draw rectangles with coverage in {coverage_range} for {h}x{w}")


def training_inpainting_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The paper's training masks: free-form strokes with p = 0.6, else 1-5 rectangles covering 10-40%."""
    if rng.random() < FREE_FORM_PROBABILITY:
        return free_form_mask(h, w, rng), "freeform"
    return rectangles_mask(h, w, rng), "rectangles"


def center_mask(h: int, w: int) -> np.ndarray:
    """The evaluation box (h/4, w/4, h/2, w/2): the 128x128 centre of a 256x256 image."""
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = True
    return mask


def uncrop_mask(h: int, w: int, side: str) -> np.ndarray:
    """Half of the image to generate: one side (``left``, ``right``, ``top``, ``bottom``) or ``all`` four sides.

    For ``all`` the known part is the centred box of sides h/sqrt(2) x w/sqrt(2), so about 50% is generated.
    """
    mask = np.zeros((h, w), dtype=bool)
    if side == "left":
        mask[:, : w // 2] = True
    elif side == "right":
        mask[:, w - w // 2 :] = True
    elif side == "top":
        mask[: h // 2, :] = True
    elif side == "bottom":
        mask[h - h // 2 :, :] = True
    elif side == "all":
        kh, kw = int(round(h / math.sqrt(2))), int(round(w / math.sqrt(2)))
        mask[:] = True
        top, left = (h - kh) // 2, (w - kw) // 2
        mask[top : top + kh, left : left + kw] = False
    else:
        raise ValueError(f"unknown uncropping side {side!r}: choose one of left, right, top, bottom, all")
    return mask


def training_uncrop_side(rng: np.random.Generator) -> str:
    """The paper's uncropping masks: with p = 0.5 all four sides, else one side chosen uniformly."""
    if rng.random() < 0.5:
        return "all"
    return UNCROP_SIDES[int(rng.integers(0, 4))]


MASK_NAMES = ("center", *(f"freeform-{r}" for r in EVAL_FREE_FORM_RANGES), *(f"uncrop-{s}" for s in (*UNCROP_SIDES, "all")))


def named_mask(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An evaluation mask by name: ``center``, ``freeform-10-20``, ``freeform-20-30``, ``freeform-30-40``,
    ``uncrop-left`` (or right, top, bottom, all)."""
    if name == "center":
        return center_mask(h, w)
    match = re.fullmatch(r"freeform-(\d+)-(\d+)", name)
    if match:
        low, high = int(match.group(1)) / 100, int(match.group(2)) / 100
        return free_form_mask_with_coverage(h, w, rng, low, high)
    if name.startswith("uncrop-"):
        return uncrop_mask(h, w, name[len("uncrop-") :])
    raise ValueError(f"unknown mask {name!r}: use a mask image file or one of {', '.join(MASK_NAMES)}")
