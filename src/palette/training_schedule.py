"""What each optimisation step of a run uses, from the config and the step number alone: its learning rate, its EMA
decay, its random seed, and how its global batch is laid out over processes and micro-batches. Nothing here depends
on the state of a run, which is why a resumed run repeats an uninterrupted one."""

from __future__ import annotations

import numpy as np

from .config import Config
from .errors import ArgumentError


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s own random draws (dropout), independent of every other step's."""
    return int(np.random.SeedSequence([seed, step, 7]).generate_state(1, dtype=np.uint64)[0] >> 1)


def learning_rate(config: Config, step: int) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then constant (the paper)."""
    warmup = config.train.warmup_steps
    return config.train.lr * min(1.0, (step + 1) / warmup) if warmup > 0 else config.train.lr


def ema_decay(config: Config, step: int) -> float:
    """``train.ema_decay``, or with ``train.ema_warmup`` min(decay, (1 + n) / (10 + n)): a short run's EMA follows the
    weights early instead of averaging in the random initial ones."""
    decay = config.train.ema_decay
    return min(decay, (1 + step) / (10 + step)) if config.train.ema_warmup else decay


def batch_layout(batch_size: int, processes: int, micro_batch_size: int = 0) -> tuple[int, int]:
    """(micro-batch, accumulation steps) per process for a global ``batch_size`` over ``processes``.

    The accumulation count is the smallest divisor of the per-process share that keeps micro-batches within
    ``micro_batch_size`` (0: no limit), so every micro-batch has the same size: 1024 on 8 processes with
    micro_batch_size 48 is 128 per process, 4 micro-batches of 32.
    """
    if batch_size % processes:
        raise ArgumentError("train.batch_size", f"{batch_size} is the global batch: it must be divisible by the "
                            f"{processes} processes")
    share = batch_size // processes
    limit = micro_batch_size or share
    accumulation = next(a for a in range(-(-share // limit), share + 1) if share % a == 0)
    return share // accumulation, accumulation
