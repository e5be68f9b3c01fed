"""Panoramas: an image extended step by step with the uncropping model, as in the paper's 256 x 2304 panorama.

Each application takes a square window of the image's height (its width for vertical panoramas) at one end of the
panorama so far: the half that overlaps the panorama is known, the other half is generated, and the generated half
is appended. The paper extends a 256x256 centre by 128 px per application, 8 times on each side, to 256 x 2304.
Both ends are sampled together in one batch at each application, each with its own seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import masks
from .errors import PaletteError
from .model import PaletteModel
from .sampling import check_sampling_args, check_task, make_condition, sample_conditions

DIRECTIONS = {"horizontal": ("left", "right"), "vertical": ("top", "bottom")}


def _generated(side: str, window: int) -> int:
    """How many rows or columns an uncropping of ``side`` generates in a square window (the mask's own split)."""
    mask = masks.uncrop_mask(window, window, side)
    return int(mask[0].sum() if side in ("left", "right") else mask[:, 0].sum())


def panorama_size(height: int, width: int, extend: int, direction: str = "horizontal") -> tuple[int, int]:
    """(height, width) of a panorama of ``extend`` applications on each side of a height x width image."""
    if direction not in DIRECTIONS:
        raise PaletteError(f"--direction must be horizontal or vertical, got {direction!r}")
    window = height if direction == "horizontal" else width
    grown = extend * sum(_generated(side, window) for side in DIRECTIONS[direction])
    return (height, width + grown) if direction == "horizontal" else (height + grown, width)


def _axis(direction: str) -> int:
    return 2 if direction == "horizontal" else 1  # the axis of a (C, H, W) image that grows


def extend_image(
    model: PaletteModel,
    image: torch.Tensor,
    extend: int,
    direction: str = "horizontal",
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    eta: float | None = None,
    schedule: str | None = None,
    on_step: Callable[[], None] | None = None,
    guidance: float = 0.0,
) -> torch.Tensor:
    """A panorama of ``image`` (C, H, W) in [0, 1]: ``extend`` uncroppings on each side; returns it in [-1, 1].

    The image's pixels are kept exactly; application i samples its two windows with seeds ``seed + 2i`` and
    ``seed + 2i + 1``. ``guidance`` is the classifier-free guidance weight (0: none).
    """
    check_task(model, "uncropping", where="model")
    steps, schedule = check_sampling_args(model, steps, sampler, schedule, 1, flag="", eta=eta, guidance=guidance)
    if extend < 1:
        raise PaletteError(f"extend must be at least 1, got {extend}")
    panorama_size(*image.shape[1:], extend, direction)  # checks the direction
    axis = _axis(direction)
    window = image.shape[3 - axis]  # the side of the square windows: the image's extent across the growth
    sides = DIRECTIONS[direction]
    known = {side: window - _generated(side, window) for side in sides}
    if image.shape[axis] < max(known.values()):
        length = "width" if direction == "horizontal" else "height"
        raise PaletteError(
            f"the image is {image.shape[2]}x{image.shape[1]}: a {direction} panorama needs a {length} of at least "
            f"{max(known.values())} (half the {'height' if direction == 'horizontal' else 'width'}) to condition on"
        )
    canvas = image * 2 - 1
    rng = np.random.default_rng([seed, 0])
    for i in range(extend):
        conditions = []
        for side in sides:
            shape = list(canvas.shape)
            shape[axis] = window
            frame = torch.zeros(shape)
            edge = canvas.narrow(axis, 0, known[side]) if side in ("left", "top") else canvas.narrow(
                axis, canvas.shape[axis] - known[side], known[side])
            frame.narrow(axis, window - known[side] if side in ("left", "top") else 0, known[side]).copy_(edge)
            conditions.append(make_condition(model, "uncropping", (frame + 1) / 2, rng, side=side))
        results = sample_conditions(model, conditions, 1, steps, sampler=sampler, eta=eta, schedule=schedule,
                                    on_step=on_step, seeds=[seed + 2 * i, seed + 2 * i + 1], guidance=guidance)
        before, after = (result[0][0] for result in results)
        grown_before = before.narrow(axis, 0, window - known[sides[0]])
        grown_after = after.narrow(axis, known[sides[1]], window - known[sides[1]])
        canvas = torch.cat([grown_before, canvas, grown_after], dim=axis)
    return canvas
