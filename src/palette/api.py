"""The Python API for people who have a checkpoint and images.

    from palette import Palette
    model = Palette.load("runs/inpaint", device="cpu")
    samples = model.inpaint(image, mask, num_samples=3, sampler="dpmpp-2m", steps=20, seed=0)

Images may be PIL images, numpy arrays (H, W) or (H, W, C) of uint8, uint16 or floats in [0, 1], tensors (C, H, W)
of uint8 or floats in [0, 1], or paths of image files; a list, a (B, H, W, C) array or a (B, C, H, W) tensor is a batch.
Anything else (floats outside [0, 1] such as 0..255, NaN, other integer types, an empty image, more pixels than
``max_pixels``) is a PaletteError naming the argument. Any size works: each image is resized to the model's size,
sampled, and the samples resized back to the image's size (times the factor for super-resolution), or, with
``tile=True``, sampled at its own size in overlapping tiles of the model's size. For inpainting and uncropping the
pixels outside the mask are the input's own, exactly. Each input gives a list of ``num_samples`` PIL images
(tensors in [0, 1] with ``output="tensor"``); a batch gives one such list per input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .data import image_to_tensor, load_image, match_channels
from .errors import ArgumentError, PaletteError
from .model import PaletteModel
from .conditions import make_condition
from .sampling import check_task, load_model, network_calls, sample_conditions
from .sampling_options import SamplingOptions, whole_number
from .imagefile import DEFAULT_MAX_PIXELS, check_pixels, to_pil

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor


FLOAT_TOLERANCE = 1e-4  # floats this far outside [0, 1] are rounding, clipped; farther, an error


def _unit_values(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 and uint16 values scaled to [0, 1]; floats checked to be finite and in [0, 1]; float32."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535
    if not np.issubdtype(array.dtype, np.floating):
        hint = (", e.g. array.astype(np.uint8) for values 0..255" if np.issubdtype(array.dtype, np.integer)
                and 0 <= array.min() and array.max() <= 255 else "")
        raise PaletteError(f"{name}: {array.dtype} values are ambiguous; give uint8 (0..255), uint16 (0..65535) or "
                           f"floats in [0, 1]{hint}")
    if not np.isfinite(array).all():
        raise PaletteError(f"{name} holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        hint = "; for 0..255 values divide by 255 or give uint8" if low >= 0 and high <= 255 else ""
        raise PaletteError(f"{name}: float values must be in [0, 1], got {low:g} to {high:g}{hint}")
    return np.clip(array.astype(np.float32), 0, 1)


def _one_image(image: ImageLike, channels: int, name: str = "images",
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """A single image as a (channels, H, W) float tensor in [0, 1]; ``name`` is the argument in messages."""
    if isinstance(image, (str, Path)):
        try:
            return load_image(image, channels, max_pixels)
        except FileNotFoundError:
            raise PaletteError(f"{name}: {image}: no such file") from None
        except (OSError, ValueError) as err:
            raise PaletteError(f"{name}: {image} cannot be read as an image ({err})") from None
    if isinstance(image, Image.Image):
        if image.mode != "F":  # F holds floats of any range: checked as arrays are
            width, height = image.size
            if width and height:
                check_pixels(name, width, height, max_pixels)  # before the pixels of a lazily opened file are decoded
                return image_to_tensor(image, channels)
        image = np.asarray(image, dtype=np.float32)
    if torch.is_tensor(image):
        tensor = image.detach().cpu()
        array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
        array = array[None] if array.ndim == 2 else array  # (C, H, W)
    elif isinstance(image, np.ndarray):
        array = image[:, :, None] if image.ndim == 2 else image
        array = array.transpose(2, 0, 1) if array.ndim == 3 else array  # (C, H, W)
    else:
        raise PaletteError(f"{name}: expected a PIL image, a numpy array, a tensor or a path, got "
                           f"{type(image).__name__}")
    if array.ndim != 3 or array.shape[0] not in (1, 3, 4):
        raise PaletteError(f"{name}: an image must have 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    height, width = array.shape[1:]
    if not (height and width):
        raise PaletteError(f"{name}: an empty {width}x{height} image")
    check_pixels(name, width, height, max_pixels)
    tensor = torch.from_numpy(np.ascontiguousarray(_unit_values(array[:3], name)))
    return match_channels(tensor, channels)


def _as_list(images: ImageLike) -> tuple[list, bool]:
    """(list of single images, whether the input was a batch)."""
    if isinstance(images, (list, tuple)):
        return list(images), True
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), True
    if torch.is_tensor(images) and images.dim() == 4:
        return list(images), True
    return [images], False


def _mask_array(mask: Any, size: tuple[int, int]) -> np.ndarray | str:
    if isinstance(mask, str):
        return mask
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    elif torch.is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    elif mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.shape != size:
        raise ArgumentError("mask", f"is {mask.shape[1]}x{mask.shape[0]} but the image is {size[1]}x{size[0]}")
    return mask != 0


def _masks_of(mask: Any, count: int, task: str) -> list:
    """One mask (or None) per image: ``mask`` for all, or a list of one per image."""
    masks = list(mask) if isinstance(mask, (list, tuple)) else [mask] * count
    if len(masks) != count:
        raise ArgumentError("mask", f": {len(masks)} masks for {count} images")
    if task == "inpainting" and any(m is None for m in masks):
        raise ArgumentError("mask", "is needed for inpainting: an array of the image's size (nonzero = fill) or a "
                            "name")
    return masks


def _check_output(output: str) -> None:
    if output not in ("pil", "tensor"):
        raise ArgumentError("output", f"must be 'pil' or 'tensor', got {output!r}")


def _counter(progress: Callable[[int, int], None] | None, total: int) -> Callable[[], None]:
    """A step callback that reports (steps done, total) to ``progress``."""
    done = [0]

    def on_step():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    return on_step


class Palette:
    """A trained Palette model with one method per task.

    ``max_pixels`` is the most pixels an input may have (image files are checked from their header, before
    decoding); None lifts palette's own limit.
    """

    def __init__(self, model: PaletteModel, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.model = model.eval()
        self.max_pixels = max_pixels

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", use_ema: bool = True,
             max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "Palette":
        """A run folder (its latest EMA weights), a checkpoint folder or a ``.safetensors`` file."""
        return cls(load_model(path, device, use_ema), max_pixels)

    @property
    def config(self):
        return self.model.config

    @property
    def tasks(self) -> tuple[str, ...]:
        from .tasks import sample_tasks

        return sample_tasks(self.config.task.name, self.config.task.tasks)

    def __call__(
        self,
        images: ImageLike,
        task: str,
        mask: Any = None,
        side: str = "right",
        *,
        options: SamplingOptions | None = None,
        progress: Callable[[int, int], None] | None = None,
        output: str = "pil",
        **settings: Any,
    ) -> list:
        """Sample ``task`` on ``images``: a list of ``num_samples`` outputs per input (a list of lists for a batch).

        ``mask`` (inpainting): an array or PIL image of the image's size, nonzero where the model fills, or a mask
        name (``center``, ``freeform-20-30``, ...); for a batch, one mask for all or a list. ``side`` (uncropping):
        left, right, top, bottom or all. How to sample is ``options`` or its fields as keywords
        (:class:`~palette.sampling_options.SamplingOptions`): ``num_samples``, ``steps``, ``sampler``, ``seed``,
        ``eta``, ``schedule``, ``guidance``, ``batch_size``, ``batch_invariant``, ``tile``, ``overlap``; unset ones
        are the checkpoint's. Sample k of input i is seeded by (``seed``, i, k), so inputs never share noise.
        ``progress(done, total)`` is called after every network evaluation. ``batch_invariant=True`` makes each
        sample bit-identical to the same input sampled alone (the network then runs one image at a time).
        ``tile=True`` samples each image at its own size in overlapping tiles of the model's size, blended at every
        step (``overlap`` pixels, default a quarter of the model's size): for the local tasks (colorization, JPEG,
        super-resolution, deblurring, denoising, paired, inpainting of small holes), not uncropping.
        ``guidance`` w > 0 samples with classifier-free guidance, eps = (1 + w) eps(x) - w eps(no source), for a model
        trained with ``train.cond_drop_prob`` > 0 (docs/guidance.md); 0 is the unguided sampler.
        """
        check_task(self.model, task, where="model")
        _check_output(output)
        options = SamplingOptions.of(options, **settings).resolved(self.config)
        items, batched = _as_list(images)
        conditions = self._conditions(items, batched, _masks_of(mask, len(items), task), task, side, options)
        results = sample_conditions(self.model, conditions, options,
                                    on_step=_counter(progress, network_calls(conditions, options)))
        convert = to_pil if output == "pil" else (lambda t: (t + 1) / 2)
        outputs = [[convert(sample) for sample, _ in samples] for samples in results]
        return outputs if batched else outputs[0]

    def _conditions(self, items: list, batched: bool, masks: list, task: str, side: str,
                    options: SamplingOptions) -> list:
        channels, size = self.config.model.condition_channels, self.config.model.image_size
        conditions = []
        for index, (item, m) in enumerate(zip(items, masks)):
            image = _one_image(item, channels, f"images[{index}]" if batched else "images", self.max_pixels)
            m = None if m is None else _mask_array(m, tuple(image.shape[1:]))
            conditions.append(make_condition(size, task, image, np.random.default_rng([options.seed, index]), m,
                                             side, options.tile_overlap))
        return conditions

    def colorize(self, images: ImageLike, **kwargs) -> list:
        """Colour versions of gray (or colour: their luma is used) images."""
        return self(images, "colorization", **kwargs)

    def inpaint(self, images: ImageLike, mask: Any, **kwargs) -> list:
        """Fill the nonzero pixels of ``mask``; the others stay exactly as they are."""
        return self(images, "inpainting", mask=mask, **kwargs)

    def uncrop(self, images: ImageLike, side: str = "right", **kwargs) -> list:
        """Replace half of the image on ``side`` (left, right, top, bottom or all) with a continuation."""
        return self(images, "uncropping", side=side, **kwargs)

    def restore_jpeg(self, images: ImageLike, **kwargs) -> list:
        """Remove JPEG artefacts from images as they are."""
        return self(images, "jpeg", **kwargs)

    def panorama(self, image: ImageLike, extend: int, direction: str = "horizontal",
                 progress: Callable[[int, int], None] | None = None, output: str = "pil",
                 options: SamplingOptions | None = None, **settings: Any):
        """One image extended ``extend`` times on each side by uncropping (left and right, or up and down with
        ``direction="vertical"``), each time by half its height (width); its own pixels stay exactly as they are.

        A 256x256 image with ``extend=8`` becomes 256x2304, the paper's panorama. ``options`` or its fields as
        keywords (``steps``, ``sampler``, ``seed``, ``eta``, ``schedule``, ``guidance``) say how to sample.
        """
        from .panorama import extend_image, panorama_size

        _check_output(output)
        extend = whole_number("extend", extend, 1)
        options = SamplingOptions.of(options, **settings).resolved(self.config)
        picture = _one_image(image, self.config.model.channels, "image", self.max_pixels)
        height, width = panorama_size(*picture.shape[1:], extend, direction)
        check_pixels(f"the panorama (extend={extend})", width, height, self.max_pixels)  # its size grows with extend
        out = extend_image(self.model, picture, extend, direction, options,
                           on_step=_counter(progress, extend * options.steps))
        return to_pil(out) if output == "pil" else (out + 1) / 2

    def super_resolve(self, images: ImageLike, factor: int = 4, **kwargs) -> list:
        """Images ``factor`` (2 or 4) times larger: the input is bicubic-upsampled, then refined (SR3)."""
        if factor not in (2, 4):
            raise PaletteError(f"factor must be 2 or 4 (the tasks sr-x2 and sr-x4), got {factor!r}")
        return self(images, f"sr-x{factor}", **kwargs)

    def deblur(self, images: ImageLike, **kwargs) -> list:
        """Remove Gaussian or motion blur from images as they are."""
        return self(images, "deblurring", **kwargs)

    def denoise(self, images: ImageLike, **kwargs) -> list:
        """Remove Gaussian noise from images as they are."""
        return self(images, "denoising", **kwargs)

