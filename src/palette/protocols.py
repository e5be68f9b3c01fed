"""Evaluation protocols as data: which images, which reference set, which masks.

- ``ctest10k``: the 10,000 ImageNet validation images of Larsson et al. (2016) the paper evaluates on, shipped as
  ``palette/resources/ctest10k.txt`` (lines ``/wnid/ILSVRC2012_val_XXXXXXXX.JPEG label``). ``--data`` is the ImageNet
  validation folder, either in class folders (``val/n01440764/...``) or flat (``val/ILSVRC2012_val_...``).
- ``places10k``: 30 images per class for each of the 365 Places2 classes (10,950). No list was published; the rule
  here is: from Places365's ``places365_val.txt`` (``Places365_val_00000001.jpg 165``), for each class the first 30
  file names in sorted order. ``--data`` is the validation folder holding the images and that file.
- ``fid5k``: ColTran's colorization protocol: the ImageNet validation images sorted by file name, the first 5,000
  evaluated against the next 5,000 as the FID reference.
- any folder or list file: every image, labels taken from a second column when the list has one.

Evaluation masks are generated per image index with a fixed seed (:data:`EVAL_MASK_SEED`) so every run and every
shard sees the same masks; the paper's released mask file (an ``.npz`` with one bit-packed array of N x 256 x 256
masks per category, 1 = hole) is read and written by :func:`load_mask_file` / :func:`save_mask_file`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from . import masks as M
from .data import IMAGE_EXTENSIONS
from .errors import PaletteError

PROTOCOLS = ("ctest10k", "places10k", "fid5k")
EVAL_MASK_SEED = 2021
PLACES_PER_CLASS, PLACES_CLASSES = 30, 365
FID5K_SIZE = 5000
MASK_FILE_SIZE = 256
# the paper's mask file names its categories like this
MASK_FILE_CATEGORIES = {f"freeform-{r}": f"{r}% freeform" for r in M.EVAL_FREE_FORM_RANGES}


@dataclass(frozen=True)
class EvalItem:
    id: str  # unique, usable as a file stem
    path: Path
    label: int | None = None


@dataclass
class EvalSet:
    name: str
    items: list[EvalItem]
    reference: list[EvalItem] | None = None  # None: the evaluated images' own originals are the FID reference


def _item(path: Path, root: Path, label: int | None) -> EvalItem:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return EvalItem(str(rel.with_suffix("")).replace("/", "__").replace("\\", "__"), path, label)


def _parse_list(lines: list[str], where: str) -> list[tuple[str, int | None]]:
    entries = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        label = None
        if len(parts) > 1:
            try:
                label = int(parts[1])
            except ValueError:
                raise PaletteError(f"{where} line {number}: the label {parts[1]!r} is not an integer") from None
        entries.append((parts[0], label))
    return entries


def read_list(source: Path) -> list[tuple[str, int | None]]:
    """The (path, label or None) entries of a list file."""
    return _parse_list(Path(source).read_text().splitlines(), str(source))


def folder_or_list(data: str | Path) -> EvalSet:
    """Every image of a folder (recursive, sorted), or the entries of a list file (paths relative to the list)."""
    data = Path(data)
    if data.is_dir():
        paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise PaletteError(f"--data {data}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return EvalSet(data.name, [_item(p, data, None) for p in paths])
    if data.is_file():
        items = []
        for name, label in read_list(data):
            path = Path(name)
            if not path.is_absolute() or not path.exists():
                path = data.parent / name.lstrip("/")
            items.append(_item(path, data.parent, label))
        if not items:
            raise PaletteError(f"--data {data}: the list file names no images")
        return EvalSet(data.stem, items)
    raise PaletteError(f"--data {data}: no such file or folder")


def ctest10k_entries() -> list[tuple[str, int | None]]:
    text = resources.files("palette").joinpath("resources/ctest10k.txt").read_text()
    return _parse_list(text.splitlines(), "ctest10k.txt")


def _check_exist(items: list[EvalItem], protocol: str, root: Path) -> None:
    missing = [i.path for i in items if not i.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise PaletteError(f"--protocol {protocol}: {len(missing)} of {len(items)} images are missing under {root} "
                           f"(e.g. {shown}); --data must be the folder that holds them")


def ctest10k(root: str | Path) -> EvalSet:
    """ctest10k resolved against an ImageNet validation folder (class folders or flat)."""
    root = Path(root)
    items = []
    for name, label in ctest10k_entries():
        nested = root / name.lstrip("/")
        path = nested if nested.is_file() else root / Path(name).name
        items.append(EvalItem(Path(name).stem, path, label))
    _check_exist(items, "ctest10k", root)
    return EvalSet("ctest10k", items)


def places10k_entries(val_list: str | Path) -> list[tuple[str, int]]:
    """The places10k rule applied to Places365's validation list: per class, the first 30 names in sorted order."""
    by_class: dict[int, list[str]] = {}
    for name, label in read_list(Path(val_list)):
        if label is None:
            raise PaletteError(f"{val_list}: every line needs a class label (``file label``)")
        by_class.setdefault(label, []).append(name)
    short = {c: len(v) for c, v in by_class.items() if len(v) < PLACES_PER_CLASS}
    if len(by_class) != PLACES_CLASSES or short:
        raise PaletteError(f"{val_list}: places10k needs {PLACES_CLASSES} classes with at least {PLACES_PER_CLASS} "
                           f"images each; found {len(by_class)} classes, {len(short)} of them short")
    return [(name, c) for c in sorted(by_class) for name in sorted(by_class[c])[:PLACES_PER_CLASS]]


def places10k(root: str | Path, val_list: str | Path | None = None) -> EvalSet:
    root = Path(root)
    val_list = Path(val_list) if val_list else root / "places365_val.txt"
    if not val_list.is_file():
        raise PaletteError(f"--protocol places10k needs Places365's validation list {val_list} "
                           "(from filelist_places365-standard.tar, lines 'Places365_val_00000001.jpg 165')")
    items = [EvalItem(Path(n).stem, root / n.lstrip("/"), c) for n, c in places10k_entries(val_list)]
    _check_exist(items, "places10k", root)
    return EvalSet("places10k", items)


def fid5k(data: str | Path) -> EvalSet:
    """ColTran's FID-5K: the first 5,000 of the sorted ImageNet validation images, the next 5,000 as reference."""
    full = folder_or_list(data)
    items = sorted(full.items, key=lambda i: i.path.name)
    if len(items) < 2 * FID5K_SIZE:
        raise PaletteError(f"--protocol fid5k needs at least {2 * FID5K_SIZE} validation images in {data}, "
                           f"found {len(items)}")
    return EvalSet("fid5k", items[:FID5K_SIZE], items[FID5K_SIZE : 2 * FID5K_SIZE])


def resolve(protocol: str | None, data: str | Path, places_list: str | Path | None = None) -> EvalSet:
    """The evaluation set of ``--protocol`` (or of a plain folder / list when None)."""
    if protocol is None:
        return folder_or_list(data)
    if protocol == "ctest10k":
        return ctest10k(data)
    if protocol == "places10k":
        return places10k(data, places_list)
    if protocol == "fid5k":
        return fid5k(data)
    raise PaletteError(f"--protocol {protocol!r} is unknown: choose one of {', '.join(PROTOCOLS)}")


def eval_mask(name: str, index: int, size: int) -> np.ndarray:
    """The evaluation mask ``name`` of image ``index`` at ``size`` x ``size``, the same in every run."""
    return M.named_mask(name, size, size, np.random.default_rng([EVAL_MASK_SEED, index]))


def save_mask_file(path: str | Path, masks: dict[str, np.ndarray]) -> None:
    """Write masks ({category: (N, H, W) bool}) as the paper's file: each category bit-packed in one flat array."""
    np.savez_compressed(path, **{k: np.packbits(np.asarray(v, dtype=bool), axis=None) for k, v in masks.items()})


def load_mask_file(path: str | Path, category: str, count: int | None = None,
                   size: int = MASK_FILE_SIZE) -> np.ndarray:
    """The (N, size, size) boolean masks (True = hole) of ``category`` in a bit-packed mask archive.

    ``category`` is the file's key (``"20-30% freeform"``) or palette's name for it (``freeform-20-30``); the count
    is what the archive holds unless ``count`` says otherwise.
    """
    path = Path(path)
    key = MASK_FILE_CATEGORIES.get(category, category)
    try:
        with np.load(path) as archive:
            if key not in archive.files:
                raise PaletteError(f"--mask-file {path} has no category {key!r}; it has {', '.join(archive.files)}")
            packed = archive[key]
    except (OSError, ValueError) as err:
        raise PaletteError(f"--mask-file {path}: not a numpy mask archive ({err})") from None
    per_mask = size * size
    n = len(packed) * 8 // per_mask if count is None else count
    bits = np.unpackbits(packed, axis=None)
    if n < 1 or len(bits) < n * per_mask:
        raise PaletteError(f"--mask-file {path}: category {key!r} holds {len(bits) // per_mask} masks of "
                           f"{size}x{size}, fewer than {n}")
    return bits[: n * per_mask].reshape(n, size, size).astype(bool)
