"""Panoramas: an image extended step by step with the uncropping model, as in the paper's 256 x 2304 panorama.

Each application takes a square window of the image's height (its width for vertical panoramas) at one end of the
panorama so far: the half that overlaps the panorama is known, the other half is generated, and the generated half
is appended. The paper extends a 256x256 centre by 128 px per application, 8 times on each side, to 256 x 2304.
Both ends are sampled together in one batch at each application, each with its own seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import masks
from .errors import ArgumentError
from .model import PaletteModel
from .conditions import make_condition
from .sampling import check_task, sample_conditions
from .sampling_options import SamplingOptions

DIRECTIONS = {"horizontal": ("left", "right"), "vertical": ("top", "bottom")}


def _generated(side: str, window: int) -> int:
    """How many rows or columns an uncropping of ``side`` generates in a square window (the mask's own split)."""
    mask = masks.uncrop_mask(window, window, side)
    return int(mask[0].sum() if side in ("left", "right") else mask[:, 0].sum())


def panorama_size(height: int, width: int, extend: int, direction: str = "horizontal") -> tuple[int, int]:
    """(height, width) of a panorama of ``extend`` applications on each side of a height x width image."""
    if direction not in DIRECTIONS:
        raise ArgumentError("direction", f"must be horizontal or vertical, got {direction!r}")
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
    options: SamplingOptions | None = None,
    on_step: Callable[[], None] | None = None,
    **settings: Any,
) -> torch.Tensor:
    """A panorama of ``image`` (C, H, W) in [0, 1]: ``extend`` uncroppings on each side; returns it in [-1, 1].

    ``options`` (or their fields as keywords) say how to sample; one sample per window. The image's pixels are kept
    exactly; the two windows of application i are the inputs 2i and 2i + 1 of the run's seed.
    """
    check_task(model, "uncropping", where="model", argument=None)
    options = _panorama_options(SamplingOptions.of(options, **settings)).resolved(model.config)
    if extend < 1:
        raise ArgumentError("extend", f"must be at least 1, got {extend}")
    panorama_size(*image.shape[1:], extend, direction)  # checks the direction
    axis = _axis(direction)
    window = image.shape[3 - axis]  # the side of the square windows: the image's extent across the growth
    sides = DIRECTIONS[direction]
    known = {side: window - _generated(side, window) for side in sides}
    if image.shape[axis] < max(known.values()):
        length = "width" if direction == "horizontal" else "height"
        raise ArgumentError(
            "image", f"is {image.shape[2]}x{image.shape[1]}: a {direction} panorama needs a {length} of at least "
            f"{max(known.values())} (half the {'height' if direction == 'horizontal' else 'width'}) to condition on"
        )
    canvas = image * 2 - 1
    rng = np.random.default_rng([options.seed, 0])
    for i in range(extend):
        conditions = [make_condition(model.config.model.image_size, "uncropping",
                                     (_window(canvas, axis, window, known[side], side) + 1) / 2, rng, side=side)
                      for side in sides]
        results = sample_conditions(model, conditions, options, keys=[2 * i, 2 * i + 1], on_step=on_step)
        before, after = (result[0][0] for result in results)
        grown_before = before.narrow(axis, 0, window - known[sides[0]])
        grown_after = after.narrow(axis, known[sides[1]], window - known[sides[1]])
        canvas = torch.cat([grown_before, canvas, grown_after], dim=axis)
    return canvas


def _panorama_options(options: SamplingOptions) -> SamplingOptions:
    """``options`` with both windows of an application in one batch; a setting a panorama has no use for (one sample
    per window, untiled) is refused rather than ignored."""
    for name, default in (("num_samples", 1), ("tile", False), ("overlap", None), ("save_process", 0)):
        if getattr(options, name) != default:
            raise ArgumentError(name, f"is not a panorama setting: a panorama draws one sample per window, untiled "
                                f"(got {getattr(options, name)!r})")
    return SamplingOptions.of(options, batch_size=2)


def _window(canvas: torch.Tensor, axis: int, window: int, known: int, side: str) -> torch.Tensor:
    """The square window at ``side``'s end of the panorama: its ``known`` pixels next to the hole to generate."""
    shape = list(canvas.shape)
    shape[axis] = window
    frame = torch.zeros(shape)
    if side in ("left", "top"):
        frame.narrow(axis, window - known, known).copy_(canvas.narrow(axis, 0, known))
    else:
        frame.narrow(axis, 0, known).copy_(canvas.narrow(axis, canvas.shape[axis] - known, known))
    return frame
