"""Images on disk -> clean training targets y in [-1, 1], then a task's degradation -> (x, y, mask).

A data source is a folder (searched recursively) or a text file listing one image path per line (relative paths
are taken from the list's folder, as are ctest10k-style "/wnid/file.JPEG" entries; anything after the path on a line, such as a class label, is ignored).
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
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PaletteError
from .tasks import Task, luma, resize

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def list_images(source: str | Path) -> list[Path]:
    """Image paths of a folder (recursive, sorted) or of a list file; a clear error when there are none."""
    source = Path(source)
    if not str(source):
        raise PaletteError("no data given: pass --data with a folder of images or a text file listing image paths")
    if not source.exists():
        raise PaletteError(f"--data {source}: no such file or folder")
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
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
            path = source.parent / str(path).lstrip("/")
        paths.append(path)
    if not paths:
        raise PaletteError(f"--data {source}: the list file names no images")
    return paths


def load_image(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Decode an image file into a float tensor (channels, H, W) in [0, 1] (see :func:`image_to_tensor`)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
    return image_to_tensor(img, channels)


def image_to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as a float tensor (channels, H, W) in [0, 1], keeping 16-bit precision.

    Gray images are repeated to 3 channels, colour images reduced to their luma for 1 channel, and transparency is
    composited onto white.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(img).astype(np.float32)
        array = array / (65535.0 if array.max(initial=0) > 255 or img.mode != "I" else 255.0)
        array = np.clip(array, 0, 1)[None]
    elif img.mode == "F":
        array = np.clip(np.asarray(img, dtype=np.float32), 0, 1)[None]
    else:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        img = img.convert("L" if img.mode in ("L", "1", "LA") else "RGB")
        array = np.asarray(img, dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return match_channels(torch.from_numpy(np.ascontiguousarray(array)), channels)


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
    _, h, w = image.shape
    short = min(h, w)
    side = short if scale_min >= 1 else max(1, int(round(short * rng.uniform(scale_min, 1.0))))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    image = resize(image[:, top : top + side, left : left + side], size)
    if flip and rng.random() < 0.5:
        image = image.flip(-1)
    return image


@dataclass
class ScanReport:
    readable: list[Path]
    unreadable: list[tuple[Path, str]]
    small: list[Path]


def scan_images(paths: Sequence[Path], min_size: int, max_bad_fraction: float, progress: bool = True) -> ScanReport:
    """Open every file's header: the unreadable are reported by name and skipped, the small are upscaled later.

    More than ``max_bad_fraction`` unreadable files stop the run with the list.
    """
    from tqdm.auto import tqdm

    readable, unreadable, small = [], [], []
    for path in tqdm(paths, desc="checking images", unit="file", disable=not progress or len(paths) < 200, leave=False):
        try:
            with Image.open(path) as img:
                w, h = img.size
            readable.append(path)
            if min(w, h) < min_size:
                small.append(path)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            unreadable.append((path, str(err) or type(err).__name__))
    for path, why in unreadable:
        log.warning("skipping %s: cannot be read as an image (%s)", path, why)
    if unreadable and len(unreadable) > max_bad_fraction * len(paths):
        listing = "\n  ".join(f"{p}: {why}" for p, why in unreadable[:50])
        raise PaletteError(
            f"{len(unreadable)} of {len(paths)} files cannot be read as images (more than "
            f"{max_bad_fraction:.0%}; set data.max_bad_fraction to accept more):\n  {listing}"
        )
    if not readable:
        raise PaletteError("none of the data files can be read as images")
    if small:
        names = ", ".join(str(p) for p in small[:5]) + (" ..." if len(small) > 5 else "")
        log.warning("%d image(s) are smaller than %dpx and will be upscaled: %s", len(small), min_size, names)
    return ScanReport(readable, unreadable, small)


def sample_rng(seed: int, n: int) -> np.random.Generator:
    """The random generator of the n-th example of a run (crop, flip, mask, noise, JPEG quality)."""
    return np.random.default_rng([seed, n])


class TrainingData(torch.utils.data.Dataset):
    """Example number n -> (x, y, mask) of ``task``. Epoch e visits the files in a permutation seeded by (seed, e)."""

    def __init__(self, paths: Sequence[Path], task: Task, image_size: int, channels: int, seed: int,
                 crop_scale_min: float = 1.0, flip: bool = True):
        self.paths = list(paths)
        self.task, self.image_size, self.channels, self.seed = task, image_size, channels, seed
        self.crop_scale_min, self.flip = crop_scale_min, flip
        self._orders: dict[int, np.ndarray] = {}
        self._cache: dict[Path, torch.Tensor] = {}  # decoded images, per worker process, up to CACHE_BYTES
        self._cached_bytes = 0

    CACHE_BYTES = 1 << 30

    def _load(self, path: Path) -> torch.Tensor:
        image = self._cache.get(path)
        if image is None:
            image = load_image(path, self.channels)
            size = image.numel() * image.element_size()
            if self._cached_bytes + size <= self.CACHE_BYTES:
                self._cache[path] = image
                self._cached_bytes += size
        return image

    def file_for(self, n: int) -> int:
        epoch, position = divmod(n, len(self.paths))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.paths))}
        return int(self._orders[epoch][position])

    def __len__(self) -> int:  # a stream: any n >= 0 is an example
        return 2**62

    def __getitem__(self, n: int):
        rng = sample_rng(self.seed, n)
        index = self.file_for(n)
        for attempt in range(len(self.paths)):
            path = self.paths[(index + attempt) % len(self.paths)]
            try:
                image = self._load(path)
                break
            except (OSError, ValueError) as err:  # a file that passed the header check but does not decode
                log.warning("skipping %s: cannot be decoded (%s)", path, err)
        else:
            raise PaletteError("no data file could be decoded")
        y = random_square_crop(image, self.image_size, rng, self.crop_scale_min, self.flip) * 2 - 1
        sample = self.task(y, rng)
        return {"x": sample.x, "y": sample.y, "mask": sample.mask, "task": sample.info.get("task", "")}


class StreamSampler(torch.utils.data.Sampler):
    """Example numbers start, start + 1, ... for ``count`` examples: the data position is a single integer."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.count))

    def __len__(self) -> int:
        return self.count


def training_loader(dataset: TrainingData, start: int, count: int, batch_size: int, num_workers: int):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=StreamSampler(start, count), num_workers=num_workers,
        persistent_workers=False, drop_last=False, prefetch_factor=4 if num_workers else None,
    )

