"""Random square crops of training images: the paper's random largest square, optionally smaller, maybe mirrored."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import resize


def random_square_crop(image: torch.Tensor, size: int, rng: np.random.Generator, scale_min: float = 1.0,
                       flip: bool = True) -> torch.Tensor:
    """A random square crop resized to ``size`` (side uniform in [scale_min, 1] x the shorter side), maybe mirrored.

    ``scale_min = 1`` is the paper's random largest square crop.
    """
    return random_square_crops([image], size, rng, scale_min, flip)[0]


def random_square_crops(images: Sequence[torch.Tensor], size: int, rng: np.random.Generator, scale_min: float = 1.0,
                        flip: bool = True) -> list[torch.Tensor]:
    """The same random square crop and mirroring of images of one size (a source and its target stay aligned)."""
    _, h, w = images[0].shape
    short = min(h, w)
    side = short if scale_min >= 1 else max(1, int(round(short * rng.uniform(scale_min, 1.0))))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crops = [resize(image[:, top : top + side, left : left + side], size) for image in images]
    if flip and rng.random() < 0.5:
        crops = [crop.flip(-1) for crop in crops]
    return crops
