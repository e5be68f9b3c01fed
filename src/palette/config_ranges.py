"""The range of every number in the configuration that has one.

Numbers outside their range fail late and obscurely (a division by zero at the first log, a loss that turns NaN
after hours, a data loader's traceback): :meth:`palette.config.Config.validate` checks each against this table
first, and the error names the config field (the command line names its flag instead)."""

from __future__ import annotations

import math
from typing import Any

from .errors import ArgumentError

# (config key, what it must be, whether a finite value is in range)
RANGES = (
    ("model.image_size", "positive", lambda v: v > 0),
    ("train.steps", "at least 1", lambda v: v >= 1),
    ("train.batch_size", "at least 1", lambda v: v >= 1),
    ("train.micro_batch_size", "0 (no accumulation) or positive", lambda v: v >= 0),
    ("train.lr", "positive", lambda v: v > 0),
    # the seeds of sampling (the training sheets) and of numpy's generators are 32-bit
    ("train.seed", "a whole number from 0 to 2**32 - 1", lambda v: 0 <= v <= 2**32 - 1),
    ("train.warmup_steps", "0 or more", lambda v: v >= 0),
    ("train.adam_betas", "two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
    ("train.weight_decay", "0 or more", lambda v: v >= 0),
    ("train.grad_clip", "0 (no clipping) or more", lambda v: v >= 0),
    ("train.ema_decay", "between 0 and 1", lambda v: 0 <= v <= 1),
    ("train.cond_drop_prob", "in [0, 1)", lambda v: 0 <= v < 1),
    ("train.log_every", "at least 1", lambda v: v >= 1),
    ("train.checkpoint_every", "at least 1", lambda v: v >= 1),
    ("train.sample_every", "0 (no sheets) or more", lambda v: v >= 0),
    ("train.sheet_images", "at least 1", lambda v: v >= 1),
    ("train.sheet_samples", "at least 1", lambda v: v >= 1),
    ("train.keep_checkpoints", "0 (keep all) or more", lambda v: v >= 0),
    ("train.time_limit_minutes", "0 (no limit) or more", lambda v: v >= 0),
    ("train.collective_timeout_minutes", "positive", lambda v: v > 0),
    ("distill.steps", "0 (not a student) or more", lambda v: v >= 0),
    ("data.num_workers", "0 (load in the training process) or more", lambda v: v >= 0),
    ("data.max_bad_fraction", "between 0 and 1", lambda v: 0 <= v <= 1),
    ("data.max_pixels", "at least 1", lambda v: v >= 1),
    ("data.crop_scale_min", "in (0, 1]", lambda v: 0 < v <= 1),
)


def check_ranges(config) -> None:
    """An :class:`~palette.errors.ArgumentError` naming the first field of ``config`` that is not finite and in its
    range."""
    for key, what, within in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        numbers = value if isinstance(value, tuple) else (value,)
        if not (all(math.isfinite(v) for v in numbers) and within(value)):
            raise ArgumentError(key, f"must be {what}, got {_shown(value)}")


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
