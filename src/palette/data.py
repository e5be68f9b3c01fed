"""Images on disk -> clean training targets y in [-1, 1], then a task's degradation -> (x, y, mask).

A data source is a folder (searched recursively) or a text file listing one image path per line (relative paths
are taken from the list's folder, as are ctest10k-style "/wnid/file.JPEG" entries; anything after the path on a line, such as a class label, is ignored).
Paired data (x given, not made by a degradation) is a folder holding source/ and target/, or a CSV of pairs.
Randomness is a pure function of (seed, sample number): the n-th example a run sees is the same whether the run
was resumed or not, whichever worker loads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .diffusion import sample_gamma
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, PixelLimitError, pil_to_tensor, probe, read_image
from .tasks import Task, luma, resize

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def _data_source(source: str | Path, expected: str) -> Path:
    """``--data`` as a path that exists; ``expected`` says what it should be."""
    if source is None or str(source) == "":  # Path("") would be the current folder
        raise PaletteError(f"no data given: pass --data with {expected}")
    source = Path(source)
    if not source.exists():
        raise PaletteError(f"--data {source}: no such file or folder")
    return source


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def list_images(source: str | Path) -> list[Path]:
    """Image paths of a folder (recursive, sorted) or of a list file; a clear error when there are none."""
    source = _data_source(source, "a folder of images or a text file listing image paths")
    if source.is_dir():
        paths = _images_below(source)
        if not paths:
            raise PaletteError(
                f"--data {source}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
            )
        return paths
    paths = []
    for line in source.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line.split()[0])
        if not path.exists():  # relative to the list's folder; ctest10k-style "/wnid/file.JPEG" too
            rebased = source.parent / str(path).lstrip("/")
            if rebased.exists() or not path.is_absolute():  # an absolute path found nowhere is reported as given
                path = rebased
        paths.append(path)
    if not paths:
        raise PaletteError(f"--data {source}: the list file names no images")
    return paths


def _image_files(folder: Path) -> dict[str, Path]:
    """The images below ``folder`` by name: their path relative to it without the extension."""
    named: dict[str, Path] = {}
    for path in _images_below(folder):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in named:
            raise PaletteError(f"{named[key]} and {path} have the same name: a pair needs one file per name")
        named[key] = path
    return named


def _names(paths: Sequence[Path], most: int = 10) -> str:
    return ", ".join(str(p) for p in paths[:most]) + (f" ... and {len(paths) - most} more" if len(paths) > most else "")


def list_pairs(source: str | Path) -> list[tuple[Path, Path]]:
    """(source, target) image pairs for the paired task.

    ``source`` is a folder holding ``source/`` and ``target/`` whose images pair up by name (their path below the
    folder without the extension, so ``source/a.png`` pairs with ``target/a.tif``), or a CSV file of
    ``source,target`` paths, relative to the CSV's folder (a first line ``source,target`` is a header). A file
    without a partner is an error that names it.
    """
    import csv

    source = _data_source(source, "a folder holding source/ and target/, or a CSV file of source,target pairs")
    if source.is_dir():
        folders = [source / name for name in ("source", "target")]
        if not all(f.is_dir() for f in folders):
            raise PaletteError(
                f"--data {source}: paired data is a folder holding source/ and target/ (images with matching names) "
                "or a CSV file of source,target paths"
            )
        sources, targets = (_image_files(f) for f in folders)
        lonely = [sources[k] for k in sources if k not in targets]
        orphans = [targets[k] for k in targets if k not in sources]
        if lonely or orphans:
            problems = ([f"{len(lonely)} source image(s) have no target of the same name: {_names(lonely)}"] if lonely
                        else []) + ([f"{len(orphans)} target image(s) have no source: {_names(orphans)}"] if orphans
                                    else [])
            raise PaletteError(f"--data {source}: " + "; ".join(problems))
        pairs = [(sources[k], targets[k]) for k in sorted(sources)]
    else:
        pairs = []
        with open(source, newline="") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                row = [cell.strip() for cell in row]
                if not any(row) or row[0].startswith("#"):
                    continue
                if len(row) != 2:
                    raise PaletteError(f"--data {source} line {number}: expected two columns source,target, got {row}")
                if number == 1 and [c.lower() for c in row] == ["source", "target"]:
                    continue
                pair = tuple(Path(c) if Path(c).is_absolute() else source.parent / c for c in row)
                missing = [p for p in pair if not p.is_file()]
                if missing:
                    raise PaletteError(f"--data {source} line {number}: no such file: {_names(missing)}")
                pairs.append(pair)
    if not pairs:
        raise PaletteError(f"--data {source}: no image pairs found")
    return pairs


def load_image(path: str | Path, channels: int = 3, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image file into a float tensor (channels, H, W) in [0, 1] at full precision (16-bit PNG and TIFF
    included); gray is repeated to 3 channels, colour reduced to its luma for 1 (see :func:`match_channels`).
    A file whose header claims more than ``max_pixels`` is refused before decoding (:class:`PixelLimitError`)."""
    return match_channels(read_image(path, max_pixels), channels)


def image_to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as a float tensor (channels, H, W) in [0, 1], keeping 16-bit gray precision.

    Gray images are repeated to 3 channels, colour images reduced to their luma for 1 channel, and transparency is
    composited onto white.
    """
    return match_channels(pil_to_tensor(img), channels)


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray (1, H, W) repeated to 3 channels, or colour (3, H, W) reduced to its BT.601 luma for 1 channel."""
    if channels == 3 and image.shape[0] == 1:
        return image.expand(3, -1, -1).clone()
    if channels == 1 and image.shape[0] == 3:
        return luma(image)
    return image


def random_square_crop(image: torch.Tensor, size: int, rng: np.random.Generator, scale_min: float = 1.0, flip: bool = True) -> torch.Tensor:
    """A random square crop resized to ``size`` (side uniform in [scale_min, 1] x the shorter side), maybe mirrored.

    ``scale_min = 1`` is the paper's random largest square crop.
    """
    return random_square_crops([image], size, rng, scale_min, flip)[0]


def random_square_crops(images: Sequence[torch.Tensor], size: int, rng: np.random.Generator, scale_min: float = 1.0,
                        flip: bool = True) -> list[torch.Tensor]:
    """The same random square crop and mirroring of images of one size (a source and its target stay aligned)."""
    _, h, w = images[0].shape
    short = min(h, w)
    side = short if scale_min >= 1 else max(1, int(round(short * rng.uniform(scale_min, 1.0))))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crops = [resize(image[:, top : top + side, left : left + side], size) for image in images]
    if flip and rng.random() < 0.5:
        crops = [crop.flip(-1) for crop in crops]
    return crops


Item = Path | tuple[Path, Path]  # an image file, or a (source, target) pair for the paired task


@dataclass
class ScanReport:
    readable: list[Item]
    unreadable: list[tuple[Path, str]]
    small: list[Item]
    channels: tuple[int, ...] = (3,)  # per file of an item: 3 if any such file is in colour, else 1
    bits: tuple[int, ...] = (8,)  # per file of an item: 16 if any such file has 16-bit samples, else 8


def probe_items(items: Sequence[Item], progress: bool = True,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[tuple]:
    """Read the header of every file of every item: one small outcome per item, ``("ok", min side, channels, bits)``,
    ``("unreadable", path, why)`` or ``("mismatched", sizes)``; :func:`summarize_scan` turns them into a report.
    Processes of a launched run each probe a slice of the items and pool the outcomes. A file above ``max_pixels``
    is unreadable (with the pixel limit's message)."""
    from tqdm.auto import tqdm

    outcomes = []
    for item in tqdm(items, desc="checking images", unit="file", disable=not progress or len(items) < 200, leave=False):
        infos = []
        for path in item if isinstance(item, tuple) else (item,):
            try:
                infos.append(probe(path, max_pixels))
            except (OSError, ValueError, PixelLimitError) as err:
                outcomes.append(("unreadable", path, str(err) or type(err).__name__))
                break
        else:
            sizes = [(i.width, i.height) for i in infos]
            if len(set(sizes)) > 1:
                outcomes.append(("mismatched", sizes))
            else:
                outcomes.append(("ok", min(sizes[0]), tuple(i.channels for i in infos), tuple(i.bits for i in infos)))
    return outcomes


def summarize_scan(items: Sequence[Item], outcomes: Sequence[tuple], min_size: int, max_bad_fraction: float,
                   warn: bool = True) -> ScanReport:
    """The report of :func:`probe_items`' outcomes: the unreadable are reported by name and skipped, the small are
    upscaled later. More than ``max_bad_fraction`` unreadable files stop the run with the list, and so does any pair
    whose source and target differ in size (every such pair is named). ``warn=False`` keeps the warnings to
    another process."""
    readable, unreadable, small, mismatched = [], [], [], []
    width = 2 if items and isinstance(items[0], tuple) else 1
    channels, bits = [1] * width, [8] * width
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome[0] == "unreadable":
            unreadable.append(outcome[1:])
        elif outcome[0] == "mismatched":
            mismatched.append(" vs ".join(f"{p} ({w}x{h})" for p, (w, h) in zip(item, outcome[1])))
        else:
            _, side, item_channels, item_bits = outcome
            readable.append(item)
            if side < min_size:
                small.append(item)
            channels = [max(a, b) for a, b in zip(channels, item_channels)]
            bits = [max(a, b) for a, b in zip(bits, item_bits)]
    if mismatched:
        listing = "\n  ".join(mismatched[:50]) + (f"\n  ... and {len(mismatched) - 50} more" if len(mismatched) > 50 else "")
        raise PaletteError(f"{len(mismatched)} pair(s) have a source and a target of different sizes:\n  {listing}")
    for path, why in unreadable if warn else ():
        log.warning("skipping %s: cannot be read as an image (%s)", path, why)
    if unreadable and len(unreadable) > max_bad_fraction * len(items):
        listing = "\n  ".join(f"{p}: {why}" for p, why in unreadable[:50])
        raise PaletteError(
            f"{len(unreadable)} of {len(items)} {'pairs' if width == 2 else 'files'} cannot be read as images (more "
            f"than {max_bad_fraction:.0%}; set data.max_bad_fraction to accept more):\n  {listing}"
        )
    if not readable:
        raise PaletteError("none of the data files can be read as images")
    if small and warn:
        names = ", ".join(str(p if width == 1 else p[1]) for p in small[:5]) + (" ..." if len(small) > 5 else "")
        log.warning("%d image(s) are smaller than %dpx and will be upscaled: %s", len(small), min_size, names)
    return ScanReport(readable, unreadable, small, tuple(channels), tuple(bits))


def scan_images(items: Sequence[Item], min_size: int, max_bad_fraction: float, progress: bool = True,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ScanReport:
    """Read every file's header and report (:func:`probe_items`, then :func:`summarize_scan`)."""
    return summarize_scan(items, probe_items(items, progress, max_pixels), min_size, max_bad_fraction)


def sample_rng(seed: int, n: int) -> np.random.Generator:
    """The random generator of the n-th example of a run (crop, flip, mask, noise, JPEG quality)."""
    return np.random.default_rng([seed, n])


class TrainingData(torch.utils.data.Dataset):
    """Example number n -> (x, y, mask) of ``task``. Epoch e visits the files in a permutation seeded by (seed, e).

    ``items`` are image files, or (source, target) file pairs for the paired task: then x is the source (with
    ``source_channels``), y the target, and both get the same random crop and mirroring. With a ``noise_schedule``
    each example also draws its diffusion noise level gamma and noise eps. With ``cond_drop_prob`` p > 0 its source x
    is replaced by zeros with probability p (condition dropout, for classifier-free guidance), drawn last so that
    every other draw is as without dropout. With ``level_grid`` (levels gamma_0 = 1 > ... > gamma_N of a distilled
    student's sampler) gamma is instead one of gamma_1..gamma_N, uniformly: the levels the student steps from.
    """

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

    CACHE_BYTES = 1 << 30

    def _load(self, path: Path, channels: int) -> torch.Tensor:
        image = self._cache.get((path, channels))
        if image is None:
            image = load_image(path, channels, self.max_pixels)
            size = image.numel() * image.element_size()
            if self._cached_bytes + size <= self.CACHE_BYTES:
                self._cache[(path, channels)] = image
                self._cached_bytes += size
        return image

    def _decode(self, item: Item) -> list[torch.Tensor]:
        if not isinstance(item, tuple):
            return [self._load(item, self.channels)]
        images = [self._load(item[0], self.source_channels), self._load(item[1], self.channels)]
        if images[0].shape[1:] != images[1].shape[1:]:
            raise PaletteError(f"{item[0]} and {item[1]} differ in size: a source and its target must match")
        return images

    def file_for(self, n: int) -> int:
        epoch, position = divmod(n, len(self.paths))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.paths))}
        return int(self._orders[epoch][position])

    def _draw_level(self, rng: np.random.Generator) -> torch.Tensor:
        if self.level_grid is None:
            return sample_gamma(self.noise_schedule, 1, rng)[0]
        return torch.tensor(self.level_grid[rng.integers(1, len(self.level_grid))], dtype=torch.float64)

    def __len__(self) -> int:  # a stream: any n >= 0 is an example
        return 2**62

    def __getitem__(self, n: int):
        rng = sample_rng(self.seed, n)
        index = self.file_for(n)
        for attempt in range(len(self.paths)):
            item = self.paths[(index + attempt) % len(self.paths)]
            try:
                images = self._decode(item)
                break
            except (OSError, ValueError, PixelLimitError) as err:  # passed the header scan but does not decode
                log.warning("skipping %s: cannot be decoded (%s)", item, err)
        else:
            raise PaletteError("no data file could be decoded")
        crops = [c * 2 - 1 for c in random_square_crops(images, self.image_size, rng, self.crop_scale_min, self.flip)]
        if len(crops) == 2:
            x, y = crops
            example = {"x": x, "y": y, "mask": torch.ones((1, *y.shape[1:])), "task": self.task.name}
        else:
            sample = self.task(crops[0], rng)
            example = {"x": sample.x, "y": sample.y, "mask": sample.mask, "task": sample.info.get("task", "")}
        if self.noise_schedule is not None or self.level_grid is not None:
            # the diffusion noise is the example's too: a run does not depend on how examples are split into
            # processes and micro-batches
            example["gamma"] = self._draw_level(rng)
            example["noise"] = torch.from_numpy(rng.standard_normal(tuple(example["y"].shape), dtype=np.float32))
        # the example's own draw, like its noise: a run drops the same examples however it is split into processes
        if self.cond_drop_prob and rng.random() < self.cond_drop_prob:
            example["x"] = torch.zeros_like(example["x"])  # masked tasks keep their known pixels: they are in y_t
        return example


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
