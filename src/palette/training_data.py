"""The stream of training examples: example number n -> (x, y, mask) and its diffusion noise, and which example
numbers each process trains on at each step.

Randomness is a pure function of (seed, example number): the n-th example a run sees is the same whether the run
was resumed or not, whichever process or loader worker makes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .crops import random_square_crops
from .data import load_image
from .data_files import Item, item_files_with_channels
from .diffusion import sample_gamma
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, PixelLimitError
from .tasks import Task

log = logging.getLogger(__name__)


def sample_rng(seed: int, n: int) -> np.random.Generator:
    """The random generator of the n-th example of a run (crop, flip, mask, noise, JPEG quality)."""
    return np.random.default_rng([seed, n])


class TrainingData(torch.utils.data.Dataset):
    """Example number n -> (x, y, mask) of ``task``. Epoch e visits the items in a permutation seeded by (seed, e).

    An item's files (an image, or a (source, target) pair for the paired task, the source decoded with
    ``source_channels``) get the same random crop and mirroring, and ``task`` makes the example of them. The noise is
    drawn here too, from the example's own generator, so that a run does not depend on how its examples are split
    into processes and micro-batches: with a ``noise_schedule`` each example draws its diffusion noise level gamma and
    noise eps. With ``level_grid`` (levels gamma_0 = 1 > ... > gamma_N of a distilled student's sampler) gamma is
    instead one of gamma_1..gamma_N, uniformly: the levels the student steps from. With ``cond_drop_prob`` p > 0 the
    example's x is replaced by zeros with probability p (condition dropout, for classifier-free guidance), drawn last
    so that every other draw is as without dropout.
    """

    CACHE_BYTES = 1 << 30

    def __init__(self, items: Sequence[Item], task: Task, image_size: int, channels: int, seed: int,
                 crop_scale_min: float = 1.0, flip: bool = True, source_channels: int | None = None,
                 noise_schedule=None, max_pixels: int | None = DEFAULT_MAX_PIXELS, cond_drop_prob: float = 0.0,
                 level_grid: np.ndarray | None = None):
        self.noise_schedule = noise_schedule
        self.level_grid = None if level_grid is None else np.asarray(level_grid, dtype=np.float64)
        self.cond_drop_prob = cond_drop_prob
        self.max_pixels = max_pixels
        self.paths = list(items)
        self.task, self.image_size, self.channels, self.seed = task, image_size, channels, seed
        self.source_channels = channels if source_channels is None else source_channels
        self.crop_scale_min, self.flip = crop_scale_min, flip
        self._orders: dict[int, np.ndarray] = {}
        self._cache: dict[tuple[Path, int], torch.Tensor] = {}  # decoded images, per worker process, up to CACHE_BYTES
        self._cached_bytes = 0

    def __len__(self) -> int:  # a stream: any n >= 0 is an example
        return 2**62

    def __getitem__(self, n: int):
        rng = sample_rng(self.seed, n)
        images = self._decode_from(self.file_for(n))
        crops = [c * 2 - 1 for c in random_square_crops(images, self.image_size, rng, self.crop_scale_min, self.flip)]
        sample = self.task.example(crops, rng)
        example = {"x": sample.x, "y": sample.y, "mask": sample.mask, "task": sample.info.get("task", "")}
        if self.noise_schedule is not None or self.level_grid is not None:
            example["gamma"] = self._draw_level(rng)
            example["noise"] = torch.from_numpy(rng.standard_normal(tuple(example["y"].shape), dtype=np.float32))
        if self.cond_drop_prob and rng.random() < self.cond_drop_prob:
            example["x"] = torch.zeros_like(example["x"])  # masked tasks keep their known pixels: they are in y_t
        return example

    def file_for(self, n: int) -> int:
        """The index of the item example ``n`` is made of."""
        epoch, position = divmod(n, len(self.paths))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.paths))}
        return int(self._orders[epoch][position])

    def _decode_from(self, index: int) -> list[torch.Tensor]:
        """The images of item ``index``, or of the next item that decodes (one that passed the header scan can still
        fail to decode: it is skipped with a warning)."""
        for attempt in range(len(self.paths)):
            item = self.paths[(index + attempt) % len(self.paths)]
            try:
                return self._decode(item)
            except (OSError, ValueError, PixelLimitError) as err:
                log.warning("skipping %s: cannot be decoded (%s)", item, err)
        raise PaletteError("no data file could be decoded")

    def _decode(self, item: Item) -> list[torch.Tensor]:
        files = item_files_with_channels(item, self.channels, self.source_channels)
        images = [self._load(path, channels) for path, channels in files]
        if len({image.shape[1:] for image in images}) > 1:
            raise PaletteError(f"{item[0]} and {item[1]} differ in size: a source and its target must match")
        return images

    def _load(self, path: Path, channels: int) -> torch.Tensor:
        image = self._cache.get((path, channels))
        if image is None:
            image = load_image(path, channels, self.max_pixels)
            size = image.numel() * image.element_size()
            if self._cached_bytes + size <= self.CACHE_BYTES:
                self._cache[(path, channels)] = image
                self._cached_bytes += size
        return image

    def _draw_level(self, rng: np.random.Generator) -> torch.Tensor:
        if self.level_grid is None:
            return sample_gamma(self.noise_schedule, 1, rng)[0]
        return torch.tensor(self.level_grid[rng.integers(1, len(self.level_grid))], dtype=torch.float64)


def step_examples(step: int, batch_size: int, rank: int = 0, world: int = 1) -> range:
    """The example numbers process ``rank`` of ``world`` trains on at ``step``.

    Step s's global batch is examples s*B .. s*B + B - 1 whatever the number of processes; process r takes the r-th
    of W equal slices. The data position stays a single integer, so a run can resume on another process count.
    """
    share = batch_size // world
    start = step * batch_size + rank * share
    return range(start, start + share)


class StepSampler(torch.utils.data.Sampler):
    """The example numbers of process ``rank`` for ``steps`` steps from ``first_step``, step after step."""

    def __init__(self, first_step: int, steps: int, batch_size: int, rank: int = 0, world: int = 1):
        self.first_step, self.steps, self.batch_size, self.rank, self.world = first_step, steps, batch_size, rank, world

    def __iter__(self) -> Iterator[int]:
        for step in range(self.first_step, self.first_step + self.steps):
            yield from step_examples(step, self.batch_size, self.rank, self.world)

    def __len__(self) -> int:
        return self.steps * (self.batch_size // self.world)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGUSR1 to the training process, which stops after a checkpoint (a scheduler
    signals every process of a job; a step that needs more micro-batches than the workers have prefetched would
    otherwise fail on the dead workers before it could save)."""
    import signal

    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def training_loader(dataset: TrainingData, order: StepSampler, micro_batch: int, num_workers: int):
    """Micro-batches of ``micro_batch`` examples in ``order`` (a step is B / (W * micro_batch) of them)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=micro_batch, sampler=order, num_workers=num_workers,
        persistent_workers=False, drop_last=False, prefetch_factor=4 if num_workers else None,
        worker_init_fn=_ignore_stop_signals if num_workers else None,
    )
