"""Masks for inpainting and uncropping: boolean (H, W) arrays, True where the model must generate.

Every generator takes the image's own height and width (masks are drawn for the actual size, any size) and a
``numpy.random.Generator`` so that a seed fixes the mask. Stroke lengths and widths are given for 256x256 and
scale with the image.
"""

from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image, ImageDraw

FREE_FORM_PROBABILITY = 0.6  # the paper: free-form strokes with p = 0.6, rectangles with p = 0.4
RECTANGLE_COVERAGE = (0.10, 0.40)
EVAL_FREE_FORM_RANGES = {"10-20": (0.10, 0.20), "20-30": (0.20, 0.30), "30-40": (0.30, 0.40)}
UNCROP_SIDES = ("left", "right", "top", "bottom")


def coverage(mask: np.ndarray) -> float:
    """Fraction of pixels to generate."""
    return float(np.mean(mask))


def _stroke(draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
    """One brush stroke of DeepFillv2's Algorithm 1: a polyline of random vertices drawn with a thick brush."""
    unit = min(h, w) / 256.0
    num_vertex = int(rng.integers(4, 13))
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
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


def free_form_mask(h: int, w: int, rng: np.random.Generator, max_strokes: int = 4) -> np.ndarray:
    """1 to ``max_strokes`` brush strokes (DeepFillv2, Yu et al. 2019, Algorithm 1), randomly flipped."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, max_strokes + 1))):
        _stroke(draw, h, w, rng)
    mask = np.asarray(canvas, dtype=bool)
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.5:
        mask = mask[::-1, :]
    return np.ascontiguousarray(mask)


def free_form_mask_with_coverage(h: int, w: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Brush strokes added one at a time until the coverage lies in [low, high]; an overshoot starts again."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"coverage range must satisfy 0 <= low < high <= 1, got ({low}, {high})")
    for _ in range(10_000):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(64):
            _stroke(draw, h, w, rng)
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
