"""How to sample: one set of settings, with one set of defaults, checked once against the model that samples.

Every interface (``palette sample``, ``eval``, ``panorama``, the Python API, the web app and the training sheets)
builds a :class:`SamplingOptions` and passes it down; :meth:`SamplingOptions.resolved` fills what is unset from the
checkpoint's ``diffusion`` config and checks the whole, raising :class:`~palette.errors.ArgumentError` named after the
field (the command line names its flag instead).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config
from .errors import ArgumentError
from .samplers import ETA_SAMPLERS, SAMPLERS, SCHEDULES, resolve_eta

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class SamplingOptions:
    """The settings of one sampling call; ``None`` means the checkpoint's own value (``diffusion.*``).

    ``steps`` network evaluations per sample with ``sampler`` on the ``schedule`` (inference: the paper's 1e-4..0.09;
    training: the trained levels); ``eta`` is DDIM's noise. ``guidance`` w > 0 is classifier-free guidance.
    Sample k of an input is seeded by (``seed``, the input's key, k). ``batch_size`` images go through the network
    at once; ``batch_invariant`` runs it one image at a time so a sample does not depend on its batch. ``tile``
    samples an image at its own size in tiles of the model's size overlapping by ``overlap`` pixels (default a
    quarter of the model's size). ``save_process`` P > 0 keeps the y0 estimates at P evenly spaced steps.
    """

    steps: int | None = None
    sampler: str | None = None
    schedule: str | None = None
    eta: float | None = None
    guidance: float = 0.0
    seed: int = 0
    num_samples: int = 1
    batch_size: int = 16
    batch_invariant: bool = False
    tile: bool = False
    overlap: int | None = None
    save_process: int = 0

    @classmethod
    def of(cls, options: "SamplingOptions | None" = None, **settings: Any) -> "SamplingOptions":
        """``options`` (default: the defaults) with ``settings`` replaced; an unknown setting names itself.
        ``tile_overlap=N`` is the older spelling of ``tile=True, overlap=N``. Build on options as given, not on
        resolved ones: those hold the checkpoint's values (a DDIM eta, say) as if they had been asked for."""
        if "tile_overlap" in settings:
            overlap = settings.pop("tile_overlap")
            settings.update(tile=overlap is not None, overlap=overlap)
        base = cls() if options is None else options
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ArgumentError(unknown[0], f"is not a sampling setting: use {', '.join(cls.names())}")
        return dataclasses.replace(base, **settings)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def tile_overlap(self) -> int | None:
        """The tiles' overlap in pixels, None without tiling (of resolved options)."""
        return self.overlap if self.tile else None

    def resolved(self, config: Config) -> "SamplingOptions":
        """These options with every unset value taken from ``config`` and every value checked against it."""
        d = config.diffusion
        sampler = _choice("sampler", d.sampler if self.sampler is None else self.sampler, SAMPLERS)
        schedule = _choice("schedule", d.sample_schedule if self.schedule is None else self.schedule, SCHEDULES)
        eta = resolve_eta(sampler, _number("eta", self.eta), d.eta)
        if eta < 0:
            raise ArgumentError("eta", f"must be 0 or more, got {eta:g}")
        if eta and sampler not in ETA_SAMPLERS:
            raise ArgumentError("eta", f"is DDIM's noise and does nothing for the {sampler} sampler: leave it at 0 or "
                                "use ddim")
        steps = whole_number("steps", d.sample_steps if self.steps is None else self.steps, -MAX_SEED)
        limit = (d.inference_schedule if schedule == "inference" else d.train_schedule).steps
        if not 1 <= steps <= limit:
            raise ArgumentError("steps", f"must be between 1 and {limit} (the {schedule} schedule's length), got "
                                f"{steps}")
        check_guidance(config, self.guidance)
        check_student(config, steps, sampler, eta, schedule)
        return dataclasses.replace(
            self, steps=steps, sampler=sampler, schedule=schedule, eta=eta, seed=check_seed(self.seed),
            num_samples=whole_number("num_samples", self.num_samples, 1),
            batch_size=whole_number("batch_size", self.batch_size, 1), overlap=self._overlap(config.model.image_size),
            save_process=whole_number("save_process", self.save_process, 0),
        )

    def _overlap(self, size: int) -> int | None:
        if not self.tile:
            if self.overlap is not None:
                raise ArgumentError("overlap", "is the overlap of tiles: it needs {tile}", also=("tile",))
            return None
        overlap = size // 4 if self.overlap is None else whole_number("overlap", self.overlap, 0)
        if overlap >= size:
            raise ArgumentError("overlap", f"must be between 0 and {size - 1} (below the model's size), got {overlap}")
        return overlap


def whole_number(name: str, value: Any, low: int) -> int:
    """``value`` if it is a whole number (not a bool, not 2.5) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(name, f"must be a whole number, got {value!r}")
    if value < low:
        raise ArgumentError(name, f"must be at least {low}, got {value}")
    return int(value)


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ArgumentError(name, f"must be a finite number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ArgumentError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` if it is a whole number from 0 to :data:`MAX_SEED`, else an ArgumentError naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ArgumentError(name, f"must be a whole number from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
    return int(seed)


def check_guidance(config: Config, guidance: Any) -> None:
    """An ArgumentError unless ``guidance`` is a weight w >= 0 this model can use: any w > 0 needs a model trained
    with condition dropout, whose f(0, y_t, gamma) is an unconditional estimate."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.number)) or not (
            math.isfinite(guidance) and guidance >= 0):
        raise ArgumentError("guidance", f"must be a number of 0 or more, got {guidance!r}")
    if guidance and config.train.cond_drop_prob == 0:
        raise ArgumentError("guidance", ": this checkpoint was trained without condition dropout "
                            "(train.cond_drop_prob=0): guidance needs a model trained with it")


def check_student(config: Config, steps: int, sampler: str, eta: float, schedule: str) -> None:
    """An ArgumentError unless a distilled student (``distill.steps`` > 0) is asked for what it was trained for:
    DDIM with eta 0, in its own steps and schedule. Other models pass."""
    n = config.distill.steps
    if not n:
        return
    own = config.diffusion.sample_schedule
    asked = {"sampler": (sampler, "ddim"), "eta": (eta, 0), "schedule": (schedule, own), "steps": (steps, n)}
    wrong = next((name for name, (value, needed) in asked.items() if value != needed), None)
    if wrong is not None:
        raise ArgumentError(
            wrong, f"{asked[wrong][0]}: this checkpoint is a student distilled to sample in {n} DDIM step(s) on the "
            f"{own} schedule: sample it with {{steps}} {n}, {{sampler}} ddim, {{eta}} 0 and {{schedule}} {own}; the "
            "distillation folder holds the students for other step counts",
            also=("steps", "sampler", "eta", "schedule"))
