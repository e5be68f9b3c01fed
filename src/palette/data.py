"""Image files -> float tensors in [0, 1]: decoding at full precision (16-bit included), matching the model's channel
count, and resizing.

Where the files come from is :mod:`palette.data_files`, the header scan before training :mod:`palette.data_scan`,
crops :mod:`palette.crops` and the training examples made of them :mod:`palette.training_data`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .imagefile import DEFAULT_MAX_PIXELS, pil_to_tensor, read_image
from .tasks import luma, resize

__all__ = ["IMAGE_EXTENSIONS", "image_to_tensor", "load_image", "match_channels", "resize"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def load_image(path: str | Path, channels: int = 3, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image file into a float tensor (channels, H, W) in [0, 1] at full precision (16-bit PNG and TIFF
    included); gray is repeated to 3 channels, colour reduced to its luma for 1 (see :func:`match_channels`).
    A file whose header claims more than ``max_pixels`` is refused before decoding (:class:`PixelLimitError`)."""
    return match_channels(read_image(path, max_pixels), channels)


def image_to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as a float tensor (channels, H, W) in [0, 1], keeping 16-bit gray precision.

    Gray images are repeated to 3 channels, colour images reduced to their luma for 1 channel, and transparency is
    composited onto white.
    """
    return match_channels(pil_to_tensor(img), channels)


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray (1, H, W) repeated to 3 channels, or colour (3, H, W) reduced to its BT.601 luma for 1 channel."""
    if channels == 3 and image.shape[0] == 1:
        return image.expand(3, -1, -1).clone()
    if channels == 1 and image.shape[0] == 3:
        return luma(image)
    return image
