"""A condition to sample: the model input x of one image, and what is needed to put the output back at full size.

Every path that samples builds :class:`Condition` objects and hands them to :func:`palette.sampling.sample_conditions`:
image files and the Python API through :func:`make_condition` (any size: resized to the model, or tiled), evaluation
images and training-sheet examples through :meth:`Condition.of_example` (already at the model's size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import masks
from .data import resize
from .errors import ArgumentError
from .imagefile import PixelLimitError, probe
from .tasks import Sample, luma, make_task, with_luma
from .tiling import tile_starts

log = logging.getLogger(__name__)


@dataclass
class Condition:
    """The model input of one image (at the model's size, or at its own when tiled), plus what is needed to put the
    output back at full size."""

    original: torch.Tensor  # (C, H, W) in [-1, 1] at the file's size: the known pixels of masked tasks
    x: torch.Tensor  # (C, S, S) at the model's size S, or the whole canvas when tiled
    mask: torch.Tensor  # (1, ...) of x's size, 1 where generated
    full_mask: torch.Tensor | None  # (1, H, W) for masked tasks
    masked: bool
    tile_overlap: int | None = None  # sampled in tiles with this overlap: x and mask are then at the canvas size
    keep_luma: bool = False  # colorization resized to the model: the output keeps the input's own luma

    @classmethod
    def of_example(cls, example: Sample, masked: bool) -> "Condition":
        """The condition of a task's example (x, y, mask) at the model's size; y gives the known pixels."""
        return cls(example.y, example.x, example.mask, example.mask if masked else None, masked)

    def at_input_size(self, sample: torch.Tensor) -> torch.Tensor:
        """A sample back at the input's size; outside the mask the input's own pixels, exactly."""
        h, w = self.original.shape[1:]
        out = resize(sample.cpu(), (h, w)).clamp(-1, 1)
        if self.keep_luma:  # the sampled colours on the input's full-resolution detail, not an upscaled sample's
            out = with_luma(out, luma(self.original))
        if self.masked:
            out = out * self.full_mask + self.original * (1 - self.full_mask)
        return out

    def as_seen(self) -> torch.Tensor:
        """The model input as a person should see it, at the input's size: the noise in a hole shown as flat grey."""
        if self.masked:
            return self.original * (1 - self.full_mask)
        return resize(self.x, tuple(self.original.shape[1:]))


def tiled_canvas(height: int, width: int, size: int) -> tuple[int, int]:
    """The size an image is sampled at in tiles of ``size``: its own, or scaled up until its short side is ``size``."""
    short = min(height, width)
    if short >= size:
        return height, width
    return max(size, round(height * size / short)), max(size, round(width * size / short))


def make_condition(
    image_size: int, task: str, image: torch.Tensor, rng: np.random.Generator,
    mask: np.ndarray | str | None = None, side: str = "right", tile_overlap: int | None = None,
) -> Condition:
    """Build x for ``task`` from ``image`` (C, H, W) in [0, 1] at any size, for a model of ``image_size``.

    For super-resolution ``image`` is the low-resolution input: it is bicubic-upsampled by the factor first (SR3).
    Without ``tile_overlap`` x is at the model's size; with it, at the image's own size (scaled up if a side is
    below the model's), to be sampled in overlapping tiles.
    """
    t = make_task(task)
    if tile_overlap is not None and task == "uncropping":
        raise ArgumentError("tile", ": uncropping continues the image as a whole and cannot be sampled in tiles; "
                            "use palette panorama to extend large images")
    original = image * 2 - 1
    if t.scale != 1:
        original = resize(original, (image.shape[1] * t.scale, image.shape[2] * t.scale))
    canvas = (image_size, image_size) if tile_overlap is None else tiled_canvas(*original.shape[1:], image_size)
    small = resize(original, canvas)
    if not t.masked:
        x, m = t.condition(small, rng)
        keep_luma = task == "colorization" and canvas != tuple(original.shape[1:])
        return Condition(original, x, m, None, False, tile_overlap, keep_luma)
    full = _full_mask(task, image.shape[1:], rng, mask, side)
    full_t = torch.from_numpy(full.astype(np.float32))[None]
    # a model pixel is generated if any part of it is in the hole, so thin strokes on large images are not lost
    small_mask = (resize(full_t, canvas) > 1e-3).float() if full.shape != canvas else full_t
    if tile_overlap is not None:
        _warn_of_whole_tile_holes(small_mask[0], image_size, tile_overlap)
    x, m = t.condition(small, rng, mask=small_mask[0].numpy().astype(bool))
    return Condition(original, x, m, full_t, True, tile_overlap)


def _full_mask(task: str, size: tuple[int, int], rng: np.random.Generator, mask: np.ndarray | str | None,
               side: str) -> np.ndarray:
    """The mask of a masked task at the image's size: uncropping's side, a named mask or the given one."""
    h, w = size
    if task == "uncropping":
        if side not in (*masks.UNCROP_SIDES, "all"):
            raise ArgumentError("side", f"must be one of {', '.join((*masks.UNCROP_SIDES, 'all'))}, got {side!r}")
        return masks.uncrop_mask(h, w, side)
    if mask is None:
        raise ArgumentError("mask", "is needed for inpainting: a mask image (white = fill) or a name such as center, "
                            "freeform-20-30")
    if isinstance(mask, str):
        try:
            return masks.named_mask(mask, h, w, rng)
        except ValueError as err:
            raise ArgumentError("mask", f"{mask}: {err}") from None
    full = np.asarray(mask, dtype=bool)
    if full.shape != (h, w):
        raise ArgumentError("mask", f"is {full.shape[1]}x{full.shape[0]} but the image is {w}x{h}")
    return full


def _warn_of_whole_tile_holes(mask: torch.Tensor, size: int, overlap: int) -> None:
    height, width = mask.shape
    if any(mask[top : top + size, left : left + size].all()
           for top in tile_starts(height, size, overlap) for left in tile_starts(width, size, overlap)):
        log.warning("a hole covers a whole %d px tile: tiles see no known pixels there; large holes are better "
                    "filled without tiling", size)


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file (white = generate) as a boolean array; a non-binary mask is thresholded at half with a warning."""
    h, w = size
    try:
        probe(path, max_pixels=h * w)  # from the header, before decoding: a mask is no larger than its image
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"))
    except PixelLimitError:
        raise ArgumentError("mask", f"{path} is larger than the image ({w}x{h}): the mask must have the image's "
                            "size") from None
    except (OSError, ValueError) as err:
        raise ArgumentError("mask", f"{path}: cannot be read as an image ({err})") from None
    if gray.shape != (h, w):
        raise ArgumentError("mask", f"{path} is {gray.shape[1]}x{gray.shape[0]} but the image is {w}x{h}: the mask "
                            "must have the image's size")
    if not np.isin(gray, (0, 255)).all():
        log.warning("the mask %s is not binary (values other than 0 and 255): thresholded at 128", path)
    return gray >= 128


def resolve_mask(mask: str | Path | None, image: torch.Tensor) -> np.ndarray | str | None:
    """A mask argument: a mask image file of the image's size, or the name of a generated mask."""
    if mask is None:
        return None
    if Path(mask).is_file():
        return read_mask(Path(mask), tuple(image.shape[1:]))
    name = str(mask)
    if name in masks.MASK_NAMES or name.startswith("freeform-"):
        return name
    raise ArgumentError("mask", f"{mask}: no such file, and not a mask name ({', '.join(masks.MASK_NAMES)})")
