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
from PIL import Image

from . import masks as M

TASK_NAMES = ("colorization", "inpainting", "uncropping", "jpeg")
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
    """A degradation. ``masked`` tasks learn and generate only under the mask and keep the known pixels."""

    name: str = ""
    masked: bool = False

    def draw(self, h: int, w: int, rng: np.random.Generator) -> dict[str, Any]:
        """Random parameters for one training example."""
        return {}

    def condition(self, image: torch.Tensor, rng: np.random.Generator, **params) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input x and the mask for ``image`` under ``params``."""
        raise NotImplementedError

    def __call__(self, y: torch.Tensor, rng: np.random.Generator) -> Sample:
        params = self.draw(y.shape[1], y.shape[2], rng)
        x, mask = self.condition(y, rng, **params)
        info = {"task": self.name, **{k: v for k, v in params.items() if not isinstance(v, np.ndarray)}}
        return Sample(x, y, mask, info)

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
        mask, kind = M.training_inpainting_mask(h, w, rng)
        return {"mask": mask, "mask_kind": kind, "coverage": M.coverage(mask)}


class Uncropping(_MaskedTask):
    """Half the image is generated: one side (uniform among 4) with p = 0.5, all four sides with p = 0.5."""

    name = "uncropping"

    def draw(self, h, w, rng):
        side = M.training_uncrop_side(rng)
        return {"mask": M.uncrop_mask(h, w, side), "side": side}


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

    def __call__(self, y, rng):
        task = self.tasks[int(rng.choice(len(self.tasks), p=self.weights))]
        return task(y, rng)

    def check_channels(self, channels):
        for task in self.tasks:
            task.check_channels(channels)


_TASKS = {"colorization": Colorization, "inpainting": Inpainting, "uncropping": Uncropping, "jpeg": JpegRestoration}


def make_task(name: str, tasks: Sequence[str] = MULTI_TASK_DEFAULT, weights: Sequence[float] | None = None) -> Task:
    """A task by name; ``multi`` mixes ``tasks`` (with ``weights``) example by example."""
    if name == "multi":
        return MultiTask([make_task(t) for t in tasks], weights or None)
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join((*TASK_NAMES, 'multi'))}")
    return _TASKS[name]()


def sample_tasks(name: str, tasks: Sequence[str] = MULTI_TASK_DEFAULT) -> tuple[str, ...]:
    """The tasks a model trained on ``name`` can sample."""
    return tuple(tasks) if name == "multi" else (name,)
