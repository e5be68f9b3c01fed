"""Which model each visitor samples, and what the page says about it and starts its settings at."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from .. import checkpoint as ckpt
from ..api import Palette
from ..config import Config
from ..errors import ArgumentError, PaletteError
from ..imagefile import DEFAULT_MAX_PIXELS
from ..sampling_options import SamplingOptions
from .limits import Limits, most_affordable_steps

NO_MODEL = ("No model is loaded: start the server with --checkpoint, or with --allow-load DIR to load one from the "
            "page.")
PICK_ONE = "No model is loaded yet: pick a checkpoint above and press Load."
KEEP_LOADED = 2  # models loaded from the page kept in memory at once
PAGE_SAMPLES = 2  # the page's number of samples until the visitor changes it: enough to see them differ
MAX_STEPS = 1000  # the steps slider's end: the paper's count


class Models:
    """The model of each session: the server's ``checkpoint`` for all, or one a session loaded from under
    ``allow_load`` (a few kept in memory, reloaded when needed)."""

    def __init__(self, checkpoint: str | None, allow_load: str | Path | None, device: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        if checkpoint and allow_load:
            raise ArgumentError("allow_load", "is for a server without a checkpoint (the two exclude each other): "
                                "with a checkpoint, everyone samples that model")
        self.device, self.max_pixels = device, max_pixels
        self.fixed = Palette.load(checkpoint, device=device, max_pixels=max_pixels) if checkpoint else None
        self.root = None
        if allow_load is not None:
            self.root = Path(allow_load).resolve()
            if not self.root.is_dir():
                raise ArgumentError("allow_load", f"{allow_load}: no such folder")
        self._loaded: OrderedDict[str, Palette] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[str]:
        """What may be loaded: run folders, checkpoint folders and weights files under the folder, relative to it."""
        if self.root is None:
            return []
        found = set()
        for folder, dirs, files in os.walk(self.root):  # symbolic links to folders are not followed
            here = Path(folder)
            dirs.sort()
            if "checkpoints" in dirs:
                found.add(here)
            found.update(here / f for f in files if f.endswith(".safetensors") and f != "state.safetensors")
            if len(found) > 1000:
                break
        return sorted(str(p.relative_to(self.root)) for p in found if self._inside(p))

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def load(self, choice: str) -> Palette:
        """The model ``choice`` (one of :meth:`choices`); errors name nothing outside the folder."""
        if self.root is None:
            raise PaletteError("This server does not load checkpoints from the page.")
        if choice not in self.choices():
            raise PaletteError("Pick a checkpoint from the list.")
        with self._lock:
            if choice in self._loaded:
                self._loaded.move_to_end(choice)
                return self._loaded[choice]
        try:
            weights = ckpt.resolve_weights(self.root / choice)
            if not self._inside(weights):
                raise PaletteError("its weights are outside the allowed folder")
            model = Palette.load(weights, device=self.device, max_pixels=self.max_pixels)
        except PaletteError as err:
            message = str(err).replace(f"{self.root}{os.sep}", "").replace(str(self.root), ".")
            raise PaletteError(f"{choice} cannot be loaded: {message}") from None
        with self._lock:
            self._loaded[choice] = model
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
        return model

    def get(self, choice: str | None) -> Palette | None:
        """The model of a session that loaded ``choice`` (None: the server's own)."""
        if self.fixed is not None or choice is None:
            return self.fixed
        return self.load(choice)


def describe(model: Palette | None, missing: str = NO_MODEL) -> str:
    if model is None:
        return missing
    c = model.config
    student = (f" A student distilled to {c.distill.steps} DDIM step(s): it samples with the ddim sampler in exactly "
               "that many steps." if c.distill.steps else "")
    return (f"Loaded a {c.task.name} model ({', '.join(model.tasks)}), {c.model.image_size}x{c.model.image_size}, "
            f"preset {c.preset}.{student}")


def sampling_defaults(model: Palette | None, limits: Limits = Limits()) -> tuple[int, str]:
    """The page's steps and sampler for ``model``: the checkpoint's own (``SamplingOptions().resolved``), the steps
    lowered, if need be, to the most the request budget allows for the page's first request (``PAGE_SAMPLES``
    samples, untiled, unguided) and the slider's end. A distilled student keeps its own steps: it samples no other.
    Without a model, the library's defaults."""
    config = Config() if model is None else model.config
    options = SamplingOptions().resolved(config)
    if config.distill.steps:
        return options.steps, options.sampler
    affordable = most_affordable_steps(config.model.image_size, PAGE_SAMPLES, limits)
    return max(1, min(options.steps, affordable, MAX_STEPS)), options.sampler
