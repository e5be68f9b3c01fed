"""What the page's Run button does: the page's values checked, then the samples through the Python API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..api import Palette
from ..errors import PaletteError
from ..sampling_options import SamplingOptions
from .limits import Limits, check_request, read_upload
from .models import MAX_STEPS, PICK_ONE

DRAWN = "drawn with the brush"
# the ends of the page's sliders, held for requests sent around them too
MAX_SAMPLES = 8
MAX_EXTEND = 8  # panorama extensions
MAX_GUIDANCE = 10.0


class Cancelled(Exception):
    """The visitor pressed Stop."""


def drawn_mask(editor: dict | None, photo: Image.Image) -> np.ndarray:
    layers = (editor or {}).get("layers") or []
    drawn = [np.asarray(layer)[..., 3] > 0 for layer in layers if layer is not None]
    mask = np.any(drawn, axis=0) if drawn else None
    if mask is None or not mask.any():
        raise PaletteError("The drawn mask is empty: once the photo shows in the editor, draw the region to fill "
                           "with the brush, or pick a generated mask.")
    if mask.shape != (photo.height, photo.width):
        mask = np.asarray(Image.fromarray(mask).resize(photo.size, Image.NEAREST))
    return mask


def _whole_number(value: Any) -> Any:
    """A number the browser sent as 2.0 as the whole number 2; anything else as it came, for the checks to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _within_slider(value: Any, name: str, low: int, high: int) -> int:
    value = _whole_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise PaletteError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class PageRequest:
    """The page's values when Run is pressed, as the browser sent them (numbers may come as 2.0; nothing is
    checked yet). Unset sampling values are the checkpoint's."""

    path: str | None  # the uploaded photo
    task: str
    editor: dict | None = None  # the brush layers
    mask_choice: str = DRAWN
    side: str = "right"
    num_samples: Any = 1
    steps: Any = None
    sampler: Any = None
    seed: Any = 0
    tile: Any = False
    extend: Any = 0  # panorama extensions (uncropping)
    guidance: Any = 0.0


def page_options(model: Palette, request: PageRequest) -> SamplingOptions:
    """The page's settings as :class:`SamplingOptions` resolved for ``model``: the sliders' ends here, every other
    check (the seed's range, the sampler's name, guidance's need of a model trained for it, a student's own steps)
    by :meth:`SamplingOptions.resolved`, whose errors name the setting as the page labels it."""
    steps = None if request.steps is None else _within_slider(request.steps, "steps", 1, MAX_STEPS)
    options = SamplingOptions.of(
        num_samples=_within_slider(request.num_samples, "samples", 1, MAX_SAMPLES), steps=steps,
        sampler=request.sampler, seed=_whole_number(request.seed), tile=bool(request.tile), guidance=request.guidance,
    ).resolved(model.config)
    if options.guidance > MAX_GUIDANCE:
        raise PaletteError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {request.guidance!r}")
    return options


def run_request(model: Palette | None, request: PageRequest, limits: Limits,
                progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> list:
    """One request of the page: the checks, then the samples (raises :class:`Cancelled` when ``cancelled()``
    turns true, at the next network evaluation)."""
    if model is None:
        raise PaletteError(PICK_ONE)
    options = page_options(model, request)
    task, side = request.task, request.side
    extend = _within_slider(request.extend, "panorama extensions", 0, MAX_EXTEND)
    photo = read_upload(request.path, limits)
    mask = None
    if task == "inpainting":
        mask = drawn_mask(request.editor, photo) if request.mask_choice == DRAWN else request.mask_choice
    check_request(model, photo.size, task, options, extend, side, limits)

    def report(done, total):
        if cancelled():
            raise Cancelled
        if progress is not None:
            progress(done, total)

    if task == "uncropping" and extend > 0:
        direction = "horizontal" if side in ("left", "right") else "vertical"
        one_untiled = dataclasses.replace(options, num_samples=1, tile=False, overlap=None)  # a panorama's own
        return [model.panorama(photo, extend, direction, progress=report, options=one_untiled)]
    return model(photo, task, mask=mask, side=side, progress=report, options=options)
