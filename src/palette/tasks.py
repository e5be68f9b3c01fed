"""Tasks: seeded degradations that turn a clean image y into a training triple (x, y, mask).

An image here is a float tensor (C, H, W) in [-1, 1]. ``mask`` is (1, H, W), 1 where the model generates and the loss
counts: everywhere for colorization and JPEG restoration, the hole for inpainting and uncropping. A task draws its
random parameters from a ``numpy.random.Generator`` (so a seed fixes the triple) and records them in ``info``.

Tasks know nothing of the network; the same objects build the model input ``x`` at inference time through
:meth:`Task.condition`, with parameters the user chose instead of random ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import masks as mask_shapes

TASK_NAMES = ("colorization", "inpainting", "uncropping", "jpeg", "sr-x2", "sr-x4", "deblurring", "denoising")
PAPER_TASKS = ("colorization", "inpainting", "uncropping", "jpeg")  # the four tasks of the paper
PAIRED = "paired"  # x comes with y from the data (source/ and target/ files), not from a degradation
MULTI_TASK_DEFAULT = ("colorization", "inpainting", "jpeg")  # the paper's multi-task model


@dataclass
class Sample:
    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def luma(image: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma Y' = 0.299 R + 0.587 G + 0.114 B of a (3, H, W) image, as (1, H, W)."""
    if image.shape[0] == 1:
        return image
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
    return (image[:3] * weights[:, None, None]).sum(0, keepdim=True)


def with_luma(image: torch.Tensor, new_luma: torch.Tensor) -> torch.Tensor:
    """``image`` (3, H, W) in [-1, 1] with its luma replaced by ``new_luma`` (1, H, W) and its chroma kept: in YCbCr
    every channel moves by the change of Y (R = Y + 1.402 Cr, ...), clamped to the range."""
    return (image + (new_luma - luma(image))).clamp(-1, 1)


def resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of a (C, H, W) float image (PIL's filter), clamped to the input's range."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[1:]) == size:
        return image
    out = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
    return out.clamp(float(image.min()), float(image.max()))


def jpeg_compress(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode with libjpeg at ``quality`` (8 bits per channel, 4:2:0 chroma as PIL's default)."""
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32)
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    return torch.from_numpy(decoded).permute(2, 0, 1) / 127.5 - 1


def jpeg_quality_distribution(low: int = 5, high: int = 30, temperature: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """The paper's JPEG qualities: integers Q in [low, high] with P(Q) proportional to exp(-Q / 10)."""
    q = np.arange(low, high + 1)
    p = np.exp(-q / temperature)
    return q, p / p.sum()


class Task:
    """A degradation. ``masked`` tasks learn and generate only under the mask and keep the known pixels.

    ``scale`` is the output's size over the input's at inference (the super-resolution factor, else 1).
    """

    name: str = ""
    masked: bool = False
    scale: int = 1

    def draw(self, h: int, w: int, rng: np.random.Generator) -> dict[str, Any]:
        """Random parameters for one training example."""
        return {}

    def condition(self, image: torch.Tensor, rng: np.random.Generator, **params) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input x and the mask for ``image`` under ``params``."""
        raise NotImplementedError

    def example(self, images: Sequence[torch.Tensor], rng: np.random.Generator) -> Sample:
        """The training example of one data item, given as its images: a degradation's item is the target y alone,
        and x is made from it with parameters drawn from ``rng``."""
        (y,) = images
        params = self.draw(y.shape[1], y.shape[2], rng)
        x, mask = self.condition(y, rng, **params)
        info = {"task": self.name, **{k: v for k, v in params.items() if not isinstance(v, np.ndarray)}}
        return Sample(x, y, mask, info)

    def __call__(self, y: torch.Tensor, rng: np.random.Generator) -> Sample:
        """The training example of the target ``y``."""
        return self.example((y,), rng)

    def check_channels(self, channels: int) -> None:
        """Raise ValueError if the task cannot work on images of ``channels`` channels."""


def _full_mask(image: torch.Tensor) -> torch.Tensor:
    return torch.ones((1, *image.shape[1:]), dtype=image.dtype)


class Colorization(Task):
    """x is the luma of y, repeated on the colour channels (the network input stays 2C channels)."""

    name = "colorization"

    def condition(self, image, rng, **params):
        return luma(image).expand(image.shape[0], -1, -1).clone(), _full_mask(image)

    def check_channels(self, channels):
        if channels != 3:
            raise ValueError(f"colorization needs 3-channel (RGB) images, but the model has {channels} channel(s)")


class _MaskedTask(Task):
    masked = True

    def condition(self, image, rng, mask: np.ndarray | None = None, **params):
        """The hole of x is filled with N(0, 1) noise; there is no mask channel (the paper's choice)."""
        if mask is None:
            raise ValueError(f"{self.name} needs a mask")
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[2]}x{image.shape[1]}")
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        noise = torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32))
        return image * (1 - m) + noise * m, m


class Inpainting(_MaskedTask):
    """Training masks: free-form strokes (p = 0.6) or 1-5 rectangles over 10-40% (p = 0.4)."""

    name = "inpainting"

    def draw(self, h, w, rng):
        mask, kind = mask_shapes.training_inpainting_mask(h, w, rng)
        return {"mask": mask, "mask_kind": kind, "coverage": mask_shapes.coverage(mask)}


class Uncropping(_MaskedTask):
    """Half the image is generated: one side (uniform among 4) with p = 0.5, all four sides with p = 0.5."""

    name = "uncropping"

    def draw(self, h, w, rng):
        side = mask_shapes.training_uncrop_side(rng)
        return {"mask": mask_shapes.uncrop_mask(h, w, side), "side": side}


class JpegRestoration(Task):
    """x is y after JPEG compression at quality Q, Q in 5..30 with P(Q) proportional to exp(-Q/10)."""

    name = "jpeg"

    def __init__(self, quality_range: Sequence[int] = (5, 30)):
        self.qualities, self.probabilities = jpeg_quality_distribution(*quality_range)

    def draw(self, h, w, rng):
        return {"quality": int(rng.choice(self.qualities, p=self.probabilities))}

    def condition(self, image, rng, quality: int | None = None, **params):
        """With ``quality`` None the image is taken as it is (a JPEG file to restore)."""
        x = image if quality is None else jpeg_compress(image, quality).to(image.dtype)
        return x, _full_mask(image)


class SuperResolution(Task):
    """x is y bicubic-downsampled by ``factor`` and bicubic-upsampled back to y's size (SR3's conditioning).

    At inference the input is the low-resolution image itself: :attr:`scale` tells the sampler to upsample it by
    ``factor`` first, so the output is ``factor`` times the input's size.
    """

    def __init__(self, factor: int):
        self.factor = int(factor)
        self.scale = self.factor
        self.name = f"sr-x{self.factor}"

    def draw(self, h, w, rng):
        return {"factor": self.factor}

    def condition(self, image, rng, factor: int | None = None, **params):
        """With ``factor`` None the image is taken as it is (an already upsampled low-resolution image)."""
        if factor is None:
            return image, _full_mask(image)
        h, w = image.shape[1:]
        small = resize(image, (max(1, round(h / factor)), max(1, round(w / factor))))
        return resize(small, (h, w)), _full_mask(image)


GAUSSIAN_SIGMA = (0.8, 3.0)  # pixels, each principal axis; above 0.8 the sampled kernel keeps its covariance
MOTION_LENGTH = (3.0, 15.0)  # pixels


def gaussian_kernel(sigma_1: float, sigma_2: float, angle: float) -> np.ndarray:
    """An anisotropic Gaussian exp(-u^T C^-1 u / 2), C = R(angle) diag(sigma_1^2, sigma_2^2) R(angle)^T,
    sampled on the integer grid within 4 sigma and normalised to sum 1."""
    radius = int(np.ceil(4 * max(sigma_1, sigma_2)))
    v, u = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)  # rows (down), columns (right)
    c, s = np.cos(angle), np.sin(angle)
    along, across = c * u + s * v, -s * u + c * v
    kernel = np.exp(-0.5 * ((along / sigma_1) ** 2 + (across / sigma_2) ** 2))
    return kernel / kernel.sum()


def motion_kernel(length: float, angle: float, points_per_pixel: int = 8) -> np.ndarray:
    """Linear motion blur: a centred segment of ``length`` pixels at ``angle`` (radians from the x axis), drawn as
    evenly spaced points splatted bilinearly on the grid, normalised to sum 1."""
    radius = int(np.ceil(length / 2)) + 1
    n = max(2, int(np.ceil(length * points_per_pixel)))
    t = ((np.arange(n) + 0.5) / n - 0.5) * length
    u, v = radius + t * np.cos(angle), radius + t * np.sin(angle)
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    for dv, wv in ((0, 1 - fv), (1, fv)):
        for du, wu in ((0, 1 - fu), (1, fu)):
            np.add.at(kernel, (v0 + dv, u0 + du), wv * wu)
    return kernel / kernel.sum()


def blur(image: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve each channel of a (C, H, W) image with ``kernel``, borders extended by replication."""
    k = torch.from_numpy(np.ascontiguousarray(kernel[::-1, ::-1])).to(image.dtype)  # convolution, not correlation
    r = k.shape[0] // 2
    padded = F.pad(image[:, None], (r, r, r, r), mode="replicate")
    return F.conv2d(padded, k[None, None])[:, 0]


class Deblurring(Task):
    """x is y blurred by a random kernel: with p = 0.5 an anisotropic Gaussian (each sigma in 0.8..3 px, any
    orientation), else a linear motion blur (length 3..15 px, any direction)."""

    name = "deblurring"

    def draw(self, h, w, rng):
        angle = float(rng.uniform(0, np.pi))
        if rng.random() < 0.5:
            s1, s2 = (float(v) for v in rng.uniform(*GAUSSIAN_SIGMA, size=2))
            return {"kernel": gaussian_kernel(s1, s2, angle), "blur": "gaussian", "sigma": (s1, s2), "angle": angle}
        length = float(rng.uniform(*MOTION_LENGTH))
        return {"kernel": motion_kernel(length, angle), "blur": "motion", "length": length, "angle": angle}

    def condition(self, image, rng, kernel: np.ndarray | None = None, **params):
        """With ``kernel`` None the image is taken as it is (a blurry photo to restore)."""
        return (image if kernel is None else blur(image, kernel)), _full_mask(image)


class Denoising(Task):
    """x is y plus white Gaussian noise of standard deviation sigma, sigma uniform in ``sigma_range`` (8-bit
    levels, 5..50 by default), clipped to the image range like a noisy file."""

    name = "denoising"

    def __init__(self, sigma_range: Sequence[float] = (5.0, 50.0)):
        self.sigma_range = tuple(sigma_range)

    def draw(self, h, w, rng):
        return {"sigma": float(rng.uniform(*self.sigma_range))}

    def condition(self, image, rng, sigma: float | None = None, **params):
        """With ``sigma`` None the image is taken as it is (a noisy photo to restore)."""
        if sigma is None:
            return image, _full_mask(image)
        noise = torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)).to(image.dtype)
        return (image + noise * (2 * sigma / 255)).clamp(-1, 1), _full_mask(image)


class Paired(Task):
    """x is given by the data: an item is a source image and its target (:func:`palette.data_files.list_pairs`), and
    the model generates the whole target from the source."""

    name = PAIRED

    def example(self, images, rng):
        source, target = images
        return Sample(source, target, _full_mask(target), {"task": self.name})

    def condition(self, image, rng, **params):
        return image, _full_mask(image)


class MultiTask(Task):
    """Each example is drawn from one of ``tasks`` with probability proportional to ``weights``."""

    name = "multi"

    def __init__(self, tasks: Sequence[Task], weights: Sequence[float] | None = None):
        if not tasks:
            raise ValueError("a multi-task needs at least one task")
        self.tasks = list(tasks)
        w = np.ones(len(tasks)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(w) != len(tasks) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"task weights {list(w)} do not fit tasks {[t.name for t in tasks]}")
        self.weights = w / w.sum()
        self.masked = any(t.masked for t in tasks)

    def example(self, images, rng):
        task = self.tasks[int(rng.choice(len(self.tasks), p=self.weights))]
        return task.example(images, rng)

    def check_channels(self, channels):
        for task in self.tasks:
            task.check_channels(channels)


_TASKS = {
    "colorization": Colorization, "inpainting": Inpainting, "uncropping": Uncropping, "jpeg": JpegRestoration,
    "sr-x2": lambda: SuperResolution(2), "sr-x4": lambda: SuperResolution(4), "deblurring": Deblurring,
    "denoising": Denoising,
}


def make_task(name: str, tasks: Sequence[str] = MULTI_TASK_DEFAULT, weights: Sequence[float] | None = None) -> Task:
    """A task by name; ``multi`` mixes ``tasks`` (with ``weights``) example by example."""
    if name == "multi":
        return MultiTask([make_task(t) for t in tasks], weights or None)
    if name == PAIRED:
        return Paired()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join((*TASK_NAMES, PAIRED, 'multi'))}")
    return _TASKS[name]()


def parse_task_weights(spec: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``colorization:1,inpainting:2,jpeg`` -> the tasks and their weights (a name alone weighs 1).

    The weights are relative sampling probabilities: each example is drawn from a task with probability
    weight / sum of weights.
    """
    names, weights = [], []
    for part in spec.split(","):
        name, _, weight = part.strip().partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"{spec!r} has an empty entry: write name:weight pairs separated by commas")
        if name not in TASK_NAMES:
            raise ValueError(f"unknown task {name!r} in {spec!r}: choose from {', '.join(TASK_NAMES)}")
        if name in names:
            raise ValueError(f"{name} appears twice in {spec!r}")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"the weight of {name} in {spec!r} is not a number: {weight!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"the weight of {name} in {spec!r} must be a positive number, got {weight}")
        names.append(name)
        weights.append(value)
    return tuple(names), tuple(weights)


def sample_tasks(name: str, tasks: Sequence[str] = MULTI_TASK_DEFAULT) -> tuple[str, ...]:
    """The tasks a model trained on ``name`` can sample."""
    return tuple(tasks) if name == "multi" else (name,)
