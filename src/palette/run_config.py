"""The config a run trains with: what its data decides, and what a resumed run must keep of its checkpoint's."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .config import Config
from .errors import ArgumentError, PaletteError
from .tasks import PAIRED

log = logging.getLogger(__name__)

_FIXED_KEYS = ("task", "model", "diffusion.objective")


def check_resumable(saved: Config, wanted: Config, run_dir: Path) -> None:
    """A resumed run must keep the network, the task and the objective of the checkpoint."""
    s, w = saved.to_dict(), wanted.to_dict()
    for key in _FIXED_KEYS:
        a, b = s, w
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            if key == "model" and s["model"]["image_size"] != w["model"]["image_size"]:
                raise ArgumentError("model.image_size", f"{w['model']['image_size']}: {run_dir} was trained at image "
                                    f"size {s['model']['image_size']}; keep that size to resume, or start a new run "
                                    "folder")
            raise PaletteError(f"{run_dir} holds a run with a different {key} ({a} vs {b}): resume without changing "
                               "it, or start a new run folder")


def with_data_properties(config: Config, channels: tuple[int, ...], bits: tuple[int, ...]) -> Config:
    """The config with what the data decides: the bit depth of the targets and, for paired data, the channels of
    the source and the target (3 if any file of that side is in colour, else 1)."""
    model = config.model
    if config.task.name == PAIRED:
        model = dataclasses.replace(model, source_channels=channels[0], channels=channels[1])
        log.info("paired data: %d-channel sources, %d-channel targets, %d-bit targets", channels[0], channels[1],
                 bits[-1])
    data = dataclasses.replace(config.data, target_bits=bits[-1])
    return dataclasses.replace(config, model=model, data=data)
